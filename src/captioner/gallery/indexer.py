"""Indexing: bring the catalogue up to date with the photos under some folders, one committed batch at a time.

New and changed photos are captioned and embedded; a photo whose content the
gallery already knows (a moved or copied file) reuses that work; photos gone
from under the folders leave the gallery. Photos that fail are recorded with
their reason, reported, and tried again by every run; they never stop the
run, and a photo captioned before keeps its caption and vectors when a later
read of it fails. A photo is known by the
path it was found at (a symbolic link by its own path, not its target's), so
removing a link removes its photo.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..captioning import Caption
from ..data.images import expand_paths
from ..errors import CaptionerError
from ..features.cache import hash_photos
from ..models.embedding import photo_vectors
from .catalogue import INSERT_PHOTO, blob, now

if TYPE_CHECKING:
    from . import Gallery

SAVE_EVERY = 30.0  # seconds between saves of the vector indexes while indexing
COMMIT_EVERY = 32  # photos per catalogue transaction


@dataclass
class IndexReport:
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    retried: int = 0  # photos that had failed before, tried again
    encoded: int = 0  # photos run through the captioner (the others reused a known photo's work)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason, this run
    seconds: float = 0.0
    photos: int = 0  # captioned photos in the gallery afterwards

    def summary(self) -> str:
        rate = f" ({self.encoded / self.seconds:.1f} photos/s)" if self.encoded and self.seconds else ""
        return (f"{self.added} added, {self.changed} changed, {self.moved} moved, {self.removed} removed, "
                f"{self.unchanged} unchanged, {self.retried} retried, {len(self.failed)} failed; "
                f"{self.encoded} captioned in {self.seconds:.1f} s{rate}; the gallery holds {self.photos} photos")


def absolute(path: str | Path) -> Path:
    """The path made absolute and normalised (~ the user's home), symbolic links kept (not resolved)."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def index(g: Gallery, roots: list[str | Path], progress: bool = True, batch_size: int = 16,
          stream=None) -> IndexReport:
    """Bring the gallery up to date with the photos under `roots` (files or folders)."""
    if g.catalogue.writer_lock is None:
        raise CaptionerError("this gallery was opened for reading: use Gallery.create to index")
    start = time.perf_counter()
    report = IndexReport()
    roots = [absolute(r) for r in roots]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise CaptionerError(f"no such file or folder: {missing[0]}")
    paths = [absolute(p) for p in expand_paths(roots)]
    with g.catalogue.lock:
        known = {r[1]: r for r in g.catalogue.conn.execute(
            "SELECT id, path, sha256, size, mtime_ns, error, caption IS NOT NULL FROM photos")}
    todo, stats, seen = [], {}, set()
    for p in paths:
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
    done = {row[2]: row[0] for row in known.values() if row[6]}  # captioned: vectors stored
    gone_by_hash = {row[2]: row for row in gone.values() if row[6]}
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
                conn.execute("UPDATE photos SET path = ?, size = ?, mtime_ns = ?, error = NULL WHERE id = ?",
                             (str(p), size, mtime, row[0]))
                report.moved += 1
                report.added -= 1
            elif existing and existing[6] and existing[2] == h:  # its own content again: only the stats changed
                conn.execute("UPDATE photos SET size = ?, mtime_ns = ?, error = NULL WHERE id = ?",
                             (size, mtime, existing[0]))
            elif h in done:  # a copy of a photo the gallery knows
                _copy_row(conn, done[h], p, h, size, mtime, existing)
            else:
                encode.append((p, h))
        for path, row in gone.items():
            conn.execute("DELETE FROM photos WHERE id = ?", (row[0],))
            report.removed += 1
    g.refresh()
    try:
        _encode(g, encode, stats, report, progress, batch_size, stream or g.captioner.stream)
    finally:
        g.refresh()
        g.save_vectors()
    report.seconds = time.perf_counter() - start
    report.photos = len(g.vectors)
    return report


def _copy_row(conn, source: int, path: Path, sha: str, size: int, mtime: int, existing) -> None:
    row = conn.execute("SELECT caption, alternatives, score, visual, text, tags FROM photos WHERE id = ?",
                       (source,)).fetchone()
    if existing:
        conn.execute("DELETE FROM photos WHERE id = ?", (existing[0],))
    conn.execute(INSERT_PHOTO, (str(path), sha, size, mtime, *row[:3], None, now(), *row[3:]))


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


def _commit(g: Gallery, captions: list[Caption], sha: dict[Path, str], stats: dict, report: IndexReport) -> None:
    """One transaction: the captions' rows replace those at their paths, and the failures are recorded."""
    if not captions:
        return
    ok = [c for c in captions if not c.error]
    failed = [c for c in captions if c.error]
    rows = []
    if ok:
        pooled = np.stack([c.vector for c in ok])
        images = np.stack([c.embedding for c in ok]) if g.embedding is not None else None
        text = photo_vectors(g.embedding, images, [c.beam_texts for c in ok], g.captioner.device)
        visual = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-8)
        for c, v, t in zip(ok, visual, text):
            rows.append(_row(c, sha, stats, (c.text, json.dumps(c.alternatives), c.score, None, now(), blob(v),
                                             blob(t), json.dumps([tag.to_json() for tag in c.tags]))))
    report.encoded += len(ok)
    report.failed.update({str(c.path): c.error for c in failed})
    with g.catalogue.write() as conn:
        conn.executemany("DELETE FROM photos WHERE path = ?", [(r[0],) for r in rows])
        conn.executemany(INSERT_PHOTO, rows)
        for c in failed:
            _record_failure(conn, str(c.path), c.error,
                            _row(c, sha, stats, (None, None, None, c.error, now(), None, None, None)))
    g.refresh()


def _record_failure(conn, path: str, reason: str, row: tuple | None = None) -> None:
    """Record why the photo at `path` failed, so it is listed and tried again. A photo captioned before keeps
    its caption and vectors (a passing read error must not lose them); any other is replaced by `row`, its
    error row, when given (a photo that could not even be hashed has none)."""
    if conn.execute("UPDATE photos SET error = ? WHERE path = ? AND caption IS NOT NULL", (reason, path)).rowcount:
        return
    if row is not None:
        conn.execute("DELETE FROM photos WHERE path = ?", (path,))
        conn.execute(INSERT_PHOTO, row)


def _row(c: Caption, sha: dict[Path, str], stats: dict, fields: tuple) -> tuple:
    p = Path(c.path)
    return (str(p), sha[p], *stats[str(p)], *fields)
