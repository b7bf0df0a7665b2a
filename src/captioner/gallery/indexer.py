"""Indexing: bring the catalogue up to date with the photos under some folders, one committed batch at a time.

New and changed photos are captioned and embedded; a photo whose content the
gallery already knows (a moved or copied file) reuses that work; photos gone
from under the folders leave the gallery. Photos that fail are recorded with
their reason, reported, and tried again by every run; they never stop the
run, and a photo captioned before keeps its caption and vectors when a later
read of it fails. A photo is known by the
path it was found at (a symbolic link by its own path, not its target's), so
removing a link removes its photo.

Video files beside the photos are read scene by scene (`video.scenes`, the one path from a video to captions):
each scene is an item of the gallery, with its start and end and a keyframe thumbnail. A video is decoded only
when new or changed; its new scenes replace its old ones in one transaction once it has been read. A video that
breaks partway keeps the scenes before the break and is recorded as failed, as a photo is (and read again by
the next run). Without the [video] extra, videos are skipped with the sentence saying what to install.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..captioning import Caption
from ..data.images import PHOTO_SUFFIXES, VIDEO_SUFFIXES, expand_paths, is_video
from ..errors import CaptionerError
from ..extras import require
from ..features.cache import hash_photos
from ..models.embedding import photo_vectors
from .catalogue import INSERT_PHOTO, blob, now

if TYPE_CHECKING:
    from . import Gallery

SAVE_EVERY = 30.0  # seconds between saves of the vector indexes while indexing
COMMIT_EVERY = 32  # photos per catalogue transaction
KEYFRAME_SIDE = 320  # a scene's keyframe thumbnail fits this square (the web app's thumbnail size)


@dataclass
class IndexReport:
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    retried: int = 0  # photos that had failed before, tried again
    encoded: int = 0  # photos run through the captioner (the others reused a known photo's work)
    videos: int = 0  # videos read scene by scene
    scenes: int = 0  # their scenes captioned
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason, this run
    skipped: list[str] = field(default_factory=list)  # videos left alone: the [video] extra is not installed
    seconds: float = 0.0
    photos: int = 0  # captioned items (photos and video scenes) in the gallery afterwards

    def summary(self) -> str:
        rate = f" ({self.encoded / self.seconds:.1f} photos/s)" if self.encoded and self.seconds else ""
        videos = f", {self.scenes} scenes of {self.videos} videos" if self.videos else ""
        skipped = f", {len(self.skipped)} videos skipped" if self.skipped else ""
        return (f"{self.added} added, {self.changed} changed, {self.moved} moved, {self.removed} removed, "
                f"{self.unchanged} unchanged, {self.retried} retried, {len(self.failed)} failed{skipped}; "
                f"{self.encoded} captioned in {self.seconds:.1f} s{rate}{videos}; the gallery holds {self.photos} "
                "photos and scenes")


def absolute(path: str | Path) -> Path:
    """The path made absolute and normalised (~ the user's home), symbolic links kept (not resolved)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def video_extra_missing() -> str:
    """The sentence saying what to install to index videos, or "" when the [video] extra is there."""
    try:
        require("video", "av")
    except CaptionerError as e:
        return str(e)
    return ""


def index(g: Gallery, roots: list[str | Path], progress: bool = True, batch_size: int = 16,
          stream=None, every: float = 1.0) -> IndexReport:
    """Bring the gallery up to date with the photos and videos under `roots` (files or folders); a video's frames
    are sampled every `every` seconds."""
    if g.catalogue.writer_lock is None:
        raise CaptionerError("this gallery was opened for reading: use Gallery.create to index")
    start = time.perf_counter()
    report = IndexReport()
    roots = [absolute(r) for r in roots]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise CaptionerError(f"no such file or folder: {missing[0]}")
    paths = [absolute(p) for p in expand_paths(roots, PHOTO_SUFFIXES | VIDEO_SUFFIXES)]
    if video_extra_missing():
        report.skipped = [str(p) for p in paths if is_video(p)]
    with g.catalogue.lock:  # a video's scenes share its path, hash, stats and error: any one of them stands for all
        known = {r[1]: r for r in g.catalogue.conn.execute(
            "SELECT id, path, sha256, size, mtime_ns, error, caption IS NOT NULL, scene > 0 FROM photos")}
    todo, stats, seen = [], {}, set(report.skipped)  # a skipped video keeps its scenes
    for p in paths:
        if str(p) in seen:
            continue
        seen.add(str(p))
        try:
            st = p.stat()
        except OSError as e:
            report.failed[str(p)] = f"{p}: cannot be read ({e.strerror or e})"
            continue
        stats[str(p)] = (st.st_size, st.st_mtime_ns)
        row = known.get(str(p))
        if row and row[5] is None and (row[3], row[4]) == stats[str(p)]:
            report.unchanged += 1
        else:  # new, changed, or failed before
            todo.append(p)
    gone = {path: row for path, row in known.items()
            if path not in seen and any(Path(path).is_relative_to(r) for r in roots)}
    failed_hash: dict[Path, str] = {}
    hashes = hash_photos(todo, failed=failed_hash)
    report.failed.update({str(p): reason for p, reason in failed_hash.items()})
    whole = [row for row in known.values() if row[6] and not (row[7] and row[5])]  # captioned; a video read whole
    done = {row[2]: row[1] for row in whole}  # their vectors are stored
    gone_by_hash = {row[2]: row for row in whole if row[1] in gone}
    encode: list[tuple[Path, str]] = []
    with g.catalogue.write() as conn:
        for path, reason in report.failed.items():  # unreadable before captioning
            _record_failure(conn, path, reason)
        for p, h in zip(todo, hashes):
            if h is None:
                continue
            size, mtime = stats[str(p)]
            existing = known.get(str(p))
            report.retried += bool(existing and existing[5])
            report.changed += bool(existing and not existing[5])
            report.added += existing is None
            if h in gone_by_hash and existing is None:  # moved here: same content, old path gone
                row = gone_by_hash.pop(h)
                del gone[row[1]]
                conn.execute("UPDATE photos SET path = ?, size = ?, mtime_ns = ?, error = NULL WHERE path = ?",
                             (str(p), size, mtime, row[1]))
                report.moved += 1
                report.added -= 1
            elif existing and existing[6] and existing[2] == h and not (existing[7] and existing[5]):
                # its own content again (a video's whole): only the stats changed
                conn.execute("UPDATE photos SET size = ?, mtime_ns = ?, error = NULL WHERE path = ?",
                             (size, mtime, existing[1]))
            elif h in done:  # a copy of a photo the gallery knows
                _copy_row(conn, done[h], p, h, size, mtime, existing)
            else:
                encode.append((p, h))
        for path in gone:
            conn.execute("DELETE FROM photos WHERE path = ?", (path,))  # a video's every scene
            report.removed += 1
    g.refresh()
    try:
        _encode(g, [(p, h) for p, h in encode if not is_video(p)], stats, report, progress, batch_size,
                stream or g.captioner.stream)
        _encode_videos(g, [(p, h) for p, h in encode if is_video(p)], stats, report, progress, every)
    finally:
        g.refresh()
        g.save_vectors()
    report.seconds = time.perf_counter() - start
    report.photos = len(g.vectors)
    return report


def _copy_row(conn, source: str, path: Path, sha: str, size: int, mtime: int, existing) -> None:
    """The rows at `source` (a photo's, or a video's scenes) copied to `path`, replacing those there."""
    copied = conn.execute("SELECT caption, alternatives, score, visual, text, tags, scene, scene_start, scene_end, "
                          "keyframe FROM photos WHERE path = ?", (source,)).fetchall()
    if existing:
        conn.execute("DELETE FROM photos WHERE path = ?", (existing[1],))
    conn.executemany(INSERT_PHOTO, [(str(path), sha, size, mtime, *row[:3], None, now(), *row[3:]) for row in copied])


def _encode(g: Gallery, todo: list[tuple[Path, str]], stats: dict, report: IndexReport, progress: bool,
            batch_size: int, stream) -> None:
    sha = dict(todo)
    pending: list[Caption] = []
    last_save = time.monotonic()
    bar = tqdm(total=len(todo), desc="indexing", unit="photo", disable=not progress or not todo, dynamic_ncols=True)
    for c in stream([p for p, _ in todo], batch_size=batch_size):
        pending.append(c)
        bar.update(1)
        if len(pending) >= COMMIT_EVERY:
            _commit(g, pending, sha, stats, report)
            pending = []
            if time.monotonic() - last_save > SAVE_EVERY:
                g.save_vectors()
                last_save = time.monotonic()
    _commit(g, pending, sha, stats, report)
    bar.close()


def _captioned(g: Gallery, captions: list[Caption]) -> list[tuple]:
    """The catalogue fields, caption to tags, of captions made without error (their vectors as stored)."""
    if not captions:
        return []
    pooled = np.stack([c.vector for c in captions])
    images = np.stack([c.embedding for c in captions]) if g.embedding is not None else None
    text = photo_vectors(g.embedding, images, [c.beam_texts for c in captions], g.captioner.device)
    visual = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-8)
    return [(c.text, json.dumps(c.alternatives), c.score, None, now(), blob(v), blob(t),
             json.dumps([tag.to_json() for tag in c.tags])) for c, v, t in zip(captions, visual, text)]


def _commit(g: Gallery, captions: list[Caption], sha: dict[Path, str], stats: dict, report: IndexReport) -> None:
    """One transaction: the captions' rows replace those at their paths, and the failures are recorded."""
    if not captions:
        return
    ok = [c for c in captions if not c.error]
    failed = [c for c in captions if c.error]
    rows = [_row(c.path, sha, stats, (*fields, *PHOTO)) for c, fields in zip(ok, _captioned(g, ok))]
    report.encoded += len(ok)
    report.failed.update({str(c.path): c.error for c in failed})
    with g.catalogue.write() as conn:
        conn.executemany("DELETE FROM photos WHERE path = ?", [(r[0],) for r in rows])
        conn.executemany(INSERT_PHOTO, rows)
        for c in failed:
            _record_failure(conn, str(c.path), c.error, _failure_row(c.path, c.error, sha, stats))
    g.refresh()


def _encode_videos(g: Gallery, todo: list[tuple[Path, str]], stats: dict, report: IndexReport, progress: bool,
                   every: float) -> None:
    """Each video's scenes, read whole (or up to where it breaks), replace its rows in one transaction."""
    if not todo:
        return
    from ..video.scenes import scenes  # the [video] extra: there, or its videos were skipped

    sha = dict(todo)
    for path, _ in todo:
        captions, times, keyframes, error = [], [], [], ""
        bar = tqdm(desc=path.name, unit="scene", disable=not progress, dynamic_ncols=True)
        try:
            for scene in scenes(g.captioner, path, every=every, live=False, keyframes=True):
                captions.append(scene.caption)
                times.append((scene.number, scene.start, scene.end))
                keyframes.append(_keyframe(scene.keyframe()))  # the frame itself is let go
                bar.update(1)
        except CaptionerError as e:  # cannot be read, or broke partway (after the scenes before the break)
            error = str(e)
        finally:
            bar.close()
        rows = [_row(path, sha, stats, (*fields, *when, keyframe))
                for fields, when, keyframe in zip(_captioned(g, captions), times, keyframes)]
        report.videos += 1
        report.scenes += len(rows)
        if error:
            report.failed[str(path)] = error
        with g.catalogue.write() as conn:
            if rows:
                conn.execute("DELETE FROM photos WHERE path = ?", (str(path),))
                conn.executemany(INSERT_PHOTO, rows)
            if error:
                _record_failure(conn, str(path), error, _failure_row(path, error, sha, stats))
        g.refresh()


def _keyframe(picture) -> bytes:
    """A scene's keyframe (a PIL image) as a WebP thumbnail that fits KEYFRAME_SIDE x KEYFRAME_SIDE."""
    picture.thumbnail((KEYFRAME_SIDE, KEYFRAME_SIDE))
    out = io.BytesIO()
    picture.save(out, "WEBP", quality=80)
    return out.getvalue()


def _record_failure(conn, path: str, reason: str, row: tuple | None = None) -> None:
    """Record why the photo at `path` failed, so it is listed and tried again. A photo captioned before keeps
    its caption and vectors (a passing read error must not lose them); any other is replaced by `row`, its
    error row, when given (a photo that could not even be hashed has none)."""
    if conn.execute("UPDATE photos SET error = ? WHERE path = ? AND caption IS NOT NULL", (reason, path)).rowcount:
        return
    if row is not None:
        conn.execute("DELETE FROM photos WHERE path = ?", (path,))
        conn.execute(INSERT_PHOTO, row)


PHOTO = (0, None, None, None)  # a photo's scene, start, end and keyframe


def _row(path: Path | str, sha: dict[Path, str], stats: dict, fields: tuple) -> tuple:
    p = Path(path)
    return (str(p), sha[p], *stats[str(p)], *fields)


def _failure_row(path: Path | str, error: str, sha: dict[Path, str], stats: dict) -> tuple:
    """The row of a photo or video that has never been captioned: only why it failed."""
    return _row(path, sha, stats, (None, None, None, error, now(), None, None, None, *PHOTO))
