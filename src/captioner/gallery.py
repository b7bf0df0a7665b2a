"""The gallery: a collection of photos, captioned and embedded once, to find by likeness or by description.

Files, side by side:
  gallery.db             SQLite (WAL): the catalogue, one row per photo (path, content hash, size,
                         modification time, caption, the beam's alternatives, score, when indexed, or
                         the error that stopped it) and a float16 copy of its vectors
  gallery.db.vectors     the vector indexes (faiss) of the image vectors and the text vectors,
                         tagged with the catalogue generation they reflect
  gallery.db.lock        held while `index` writes

The catalogue is the truth: every batch of photos is committed in one
transaction that bumps the catalogue's generation, and each row records the
generation that wrote it (a trigger logs removed rows the same way). Anyone
holding vector indexes of an older generation catches up by reading only what
changed since; the vector indexes are saved from time to time, after which the
removal log before them is pruned. A kill at any moment leaves the last
committed batch, and vector indexes that are missing or too old are rebuilt
from the catalogue. Readers may query while one indexer writes, and see each
batch it commits.
"""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from . import __version__
from .api import Caption, Captioner
from .errors import CaptionerError
from .features import encode_photos, hash_photos
from .files import atomic_path
from .images import expand_paths, file_sha256
from .retrieval import RetrievalConfig, load_head, photo_vectors, query_vectors, text_logprob
from .sentences import DIM, load_sentence_encoder
from .vectorindex import VectorIndex

FORMAT = 1
BY = ("both", "visual", "caption")
SAVE_EVERY = 30.0  # seconds between saves of the vector indexes while indexing
COMMIT_EVERY = 32  # photos per catalogue transaction
GRIDS_KEPT = 2048  # re-encoded photos kept in memory for re-ranking

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    caption TEXT,
    alternatives TEXT,
    score REAL,
    error TEXT,
    indexed_at TEXT NOT NULL,
    visual BLOB,
    text BLOB,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS photos_sha256 ON photos (sha256);
CREATE INDEX IF NOT EXISTS photos_generation ON photos (generation);
CREATE TABLE IF NOT EXISTS removed (id INTEGER NOT NULL, generation INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_generation ON removed (generation);
CREATE TRIGGER IF NOT EXISTS photos_written AFTER INSERT ON photos BEGIN
    UPDATE photos SET generation = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation')
    WHERE id = NEW.id;
END;
CREATE TRIGGER IF NOT EXISTS photos_removed AFTER DELETE ON photos BEGIN
    INSERT INTO removed VALUES (OLD.id, (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'));
END;
"""


INSERT_PHOTO = ("INSERT INTO photos (path, sha256, size, mtime_ns, caption, alternatives, score, error, indexed_at, "
                "visual, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def default_db() -> Path:
    """$CAPTIONER_GALLERY, else the gallery in the user's data folder."""
    if os.environ.get("CAPTIONER_GALLERY"):
        return Path(os.environ["CAPTIONER_GALLERY"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "captioner" / "gallery.db"


@dataclass
class Match:
    id: int
    path: Path
    caption: str
    score: float

    def to_json(self) -> dict:
        return {"id": self.id, "path": str(self.path), "caption": self.caption, "score": round(self.score, 4)}


@dataclass
class IndexReport:
    added: int = 0
    changed: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    encoded: int = 0  # photos run through the captioner (the others reused a known photo's work)
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason, this run
    seconds: float = 0.0
    photos: int = 0  # captioned photos in the gallery afterwards

    def summary(self) -> str:
        rate = f" ({self.encoded / self.seconds:.1f} photos/s)" if self.encoded and self.seconds else ""
        return (f"{self.added} added, {self.changed} changed, {self.moved} moved, {self.removed} removed, "
                f"{self.unchanged} unchanged, {len(self.failed)} failed; {self.encoded} captioned in "
                f"{self.seconds:.1f} s{rate}; the gallery holds {self.photos} photos")


def _blob(v: np.ndarray) -> bytes:
    return np.asarray(v, np.float16).tobytes()


def _vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.float16).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)


class Gallery:
    """A gallery on disk and the captioner that fills and queries it. Safe to query from several threads."""

    def __init__(self, db: Path, conn: sqlite3.Connection, captioner: Captioner):
        self.db = db
        self.conn = conn
        self.captioner = captioner
        self.head = load_head(captioner.model.folder)
        self.lock = threading.RLock()
        self.generation = -1
        self.visual: VectorIndex | None = None
        self.text: VectorIndex | None = None
        self.grids: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.writer_lock = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, db: str | Path | None = None, model: str | Path | None = None,
             captioner: Captioner | None = None) -> "Gallery":
        """An existing gallery, to query."""
        db = Path(db) if db else default_db()
        if not db.is_file():
            raise CaptionerError(f"there is no gallery at {db}: build one with `captioner index PHOTOS... --db {db}`")
        return cls._connect(db, model, captioner, create=False)

    @classmethod
    def create(cls, db: str | Path | None = None, model: str | Path | None = None,
               captioner: Captioner | None = None, rebuild: bool = False) -> "Gallery":
        """A gallery to index into: opened if it exists (emptied first with `rebuild`), else made."""
        db = Path(db) if db else default_db()
        db.parent.mkdir(parents=True, exist_ok=True)
        return cls._connect(db, model, captioner, create=True, rebuild=rebuild)

    @classmethod
    def _connect(cls, db: Path, model, captioner, create: bool, rebuild: bool = False) -> "Gallery":
        captioner = captioner or Captioner.load(model)
        gallery = cls(db, sqlite3.connect(db, timeout=30, check_same_thread=False, isolation_level=None), captioner)
        try:
            gallery.conn.execute("PRAGMA journal_mode=WAL")
            gallery.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
            if create:
                gallery._take_writer_lock()
            gallery._check_or_init(create, rebuild)
            gallery.refresh()
        except BaseException as e:
            gallery.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise CaptionerError(f"{db} is not a captioner gallery ({e})") from None
            raise
        return gallery

    def _take_writer_lock(self) -> None:
        self.writer_lock = open(f"{self.db}.lock", "w")
        try:
            fcntl.flock(self.writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CaptionerError(f"another `captioner index` is writing {self.db}: wait for it to finish") from None

    def _model_id(self) -> str:
        folder = self.captioner.model.folder
        parts = [file_sha256(folder / "model.safetensors")[:16]]
        if self.head is not None:
            parts.append(file_sha256(folder / "retrieval.safetensors")[:16])
        return "-".join(parts)

    def _meta(self) -> dict[str, str]:
        try:
            return dict(self.conn.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:  # no meta table: empty, or not ours
            return {}

    def _check_or_init(self, create: bool, rebuild: bool) -> None:
        meta = self._meta()
        model_id = self._model_id()
        if not meta:
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables or not create:
                raise CaptionerError(f"{self.db} is not a captioner gallery")
            self.conn.executescript(SCHEMA)
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", str(FORMAT)), ("captioner", __version__), ("model", model_id),
                    ("model_folder", str(self.captioner.model.folder)), ("generation", "0"), ("pruned", "0")])
            return
        fmt = int(meta.get("format", "0"))
        if fmt > FORMAT:
            raise CaptionerError(f"{self.db} was written by captioner {meta.get('captioner')} (gallery format {fmt}); "
                                 f"this captioner {__version__} reads format {FORMAT}: upgrade captioner "
                                 "(pip install -U captioner)")
        if fmt < FORMAT:
            raise CaptionerError(f"{self.db} was written by the older captioner {meta.get('captioner')} (gallery "
                                 f"format {fmt}): index it again with `captioner index PHOTOS... --db {self.db} "
                                 "--rebuild`")
        if rebuild:
            with self.conn:
                self.conn.execute("BEGIN")
                self._bump()
                self.conn.execute("DELETE FROM photos")
                self.conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [
                    (model_id, "model"), (str(self.captioner.model.folder), "model_folder"),
                    (__version__, "captioner")])
        elif meta["model"] != model_id:
            raise CaptionerError(f"{self.db} was indexed with another model ({meta['model_folder']}): "
                                 f"open it with that model (--model), or index it again with this one (--rebuild)")

    def _bump(self) -> None:
        """Start a new generation: first thing in every writing transaction, so its rows carry it."""
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _meta_int(self, key: str) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- vector indexes --------------------------------------------------------------------------

    @property
    def vectors_path(self) -> Path:
        return Path(f"{self.db}.vectors")

    def refresh(self) -> None:
        """Catch up with what an indexer committed since: read the rows written or removed after us."""
        with self.lock, self.conn:
            self.conn.execute("BEGIN")  # one snapshot of the catalogue
            generation = self._meta_int("generation")
            if generation == self.generation:
                return
            if self.generation < self._meta_int("pruned"):  # the removals since we last looked are forgotten
                self.generation = self._load_vectors()
            written = self.conn.execute("SELECT id, visual, text FROM photos WHERE generation > ?",
                                        (self.generation,)).fetchall()
            gone = [r[0] for r in self.conn.execute("SELECT id FROM removed WHERE generation > ?",
                                                    (self.generation,))]
            self.visual.remove(gone + [r[0] for r in written])
            self.text.remove(gone + [r[0] for r in written])
            written = [r for r in written if r[1] is not None]  # failed photos have no vectors
            if written:
                ids = np.array([r[0] for r in written])
                self.visual.add(ids, np.stack([_vector(r[1]) for r in written]))
                self.text.add(ids, np.stack([_vector(r[2]) for r in written]))
            self.generation = generation

    def _load_vectors(self) -> int:
        """Vector indexes from the saved file if it is recent enough to catch up from, else empty; their generation."""
        try:
            with safe_open(str(self.vectors_path), "np") as f:
                saved = int(f.metadata()["generation"])
                if self._meta_int("pruned") <= saved <= self._meta_int("generation"):
                    self.visual = VectorIndex.from_bytes(f.get_tensor("visual"))
                    self.text = VectorIndex.from_bytes(f.get_tensor("text"))
                    return saved
        except Exception:  # missing, partial or foreign: the catalogue has everything to rebuild them
            pass
        self.visual = VectorIndex(self.captioner.encoder.spec.dim)
        self.text = VectorIndex(DIM * (1 if self.head is None else 2))
        return -1  # empty: catching up reads every row

    def _save_vectors(self) -> None:
        """Save the vector indexes (the writer, up to date), then prune the removal log they make unneeded."""
        with self.lock:
            with atomic_path(self.vectors_path) as tmp:
                save_file({"visual": self.visual.to_bytes(), "text": self.text.to_bytes()}, str(tmp),
                          metadata={"generation": str(self.generation)})
            with self.conn:
                self.conn.execute("BEGIN")
                self.conn.execute("DELETE FROM removed WHERE generation <= ?", (self.generation,))
                self.conn.execute("UPDATE meta SET value = ? WHERE key = 'pruned'", (str(self.generation),))

    # -- indexing ----------------------------------------------------------------------------------

    def index(self, roots: list[str | Path], progress: bool = True, batch_size: int = 16,
              stream=None) -> IndexReport:
        """Bring the gallery up to date with the photos under `roots` (files or folders).

        New and changed photos are captioned and embedded; a photo whose content
        the gallery already knows (a moved or copied file) reuses that work;
        photos gone from under `roots` leave the gallery. Photos that fail are
        recorded with their reason and reported; they never stop the run.
        `stream` captions the photos (default: this gallery's captioner's `stream`;
        `raybatch.caption_stream` captions them on a Ray cluster while this process writes).
        """
        if self.writer_lock is None:
            raise CaptionerError("this gallery was opened for reading: use Gallery.create to index")
        start = time.perf_counter()
        report = IndexReport()
        roots = [Path(r).resolve() for r in roots]
        missing = [str(r) for r in roots if not r.exists()]
        if missing:
            raise CaptionerError(f"no such file or folder: {missing[0]}")
        paths = [p.resolve() for p in expand_paths(roots)]
        known = {r[1]: r for r in self.conn.execute("SELECT id, path, sha256, size, mtime_ns, error FROM photos")}
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
            if row and (row[3], row[4]) == stats[str(p)]:
                report.unchanged += 1
            else:
                todo.append(p)
        gone = {path: row for path, row in known.items()
                if path not in seen and any(Path(path).is_relative_to(r) for r in roots)}
        failed_hash: dict[Path, str] = {}
        hashes = hash_photos(todo, failed=failed_hash)
        report.failed.update({str(p): reason for p, reason in failed_hash.items()})
        done = {row[2]: row[0] for row in known.values() if row[5] is None}  # captioned: no error, vectors stored
        gone_by_hash = {row[2]: row for row in gone.values() if row[5] is None}
        encode: list[tuple[Path, str]] = []
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            self._bump()
            for p, h in zip(todo, hashes):
                if h is None:
                    continue
                size, mtime = stats[str(p)]
                existing = known.get(str(p))
                report.changed += existing is not None
                report.added += existing is None
                if h in gone_by_hash and existing is None:  # moved here: same content, old path gone
                    row = gone_by_hash.pop(h)
                    del gone[row[1]]
                    self.conn.execute("UPDATE photos SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
                                      (str(p), size, mtime, row[0]))
                    report.moved += 1
                    report.added -= 1
                elif h in done:  # a copy of a photo the gallery knows
                    self._copy_row(done[h], p, h, size, mtime, existing)
                else:
                    encode.append((p, h))
            for path, row in gone.items():
                self.conn.execute("DELETE FROM photos WHERE id = ?", (row[0],))
                report.removed += 1
        self.refresh()
        try:
            self._encode(encode, stats, report, progress, batch_size, stream or self.captioner.stream)
        finally:
            self.refresh()
            self._save_vectors()
        report.seconds = time.perf_counter() - start
        report.photos = len(self.visual)
        return report

    def _copy_row(self, source: int, path: Path, sha: str, size: int, mtime: int, existing) -> None:
        row = self.conn.execute("SELECT caption, alternatives, score, visual, text FROM photos WHERE id = ?",
                                (source,)).fetchone()
        values = (str(path), sha, size, mtime, *row[:3], None, _now(), *row[3:])
        if existing:
            self.conn.execute("DELETE FROM photos WHERE id = ?", (existing[0],))
        self.conn.execute(INSERT_PHOTO, values)

    def _encode(self, todo: list[tuple[Path, str]], stats: dict, report: IndexReport, progress: bool,
                batch_size: int, stream) -> None:
        sha = dict(todo)
        pending: list[Caption] = []
        last_save = time.monotonic()
        bar = tqdm(total=len(todo), desc="indexing", unit="photo", disable=not progress or not todo,
                   dynamic_ncols=True)
        for c in stream([p for p, _ in todo], batch_size=batch_size):
            pending.append(c)
            bar.update(1)
            if len(pending) >= COMMIT_EVERY:
                self._commit(pending, sha, stats, report)
                pending = []
                if time.monotonic() - last_save > SAVE_EVERY:
                    self._save_vectors()
                    last_save = time.monotonic()
        self._commit(pending, sha, stats, report)
        bar.close()

    def _commit(self, captions: list[Caption], sha: dict[Path, str], stats: dict, report: IndexReport) -> None:
        if not captions:
            return
        ok = [c for c in captions if not c.error]
        if ok:
            pooled = np.stack([c.vector for c in ok])
            text = photo_vectors(self.head, torch.from_numpy(pooled), [[c.text] + [a for a, _ in c.alternatives]
                                                                      for c in ok])
            visual = _unit(pooled)
        rows = []
        for c in captions:
            p = Path(c.path)
            size, mtime = stats[str(p)]
            if c.error:
                report.failed[str(p)] = c.error
                rows.append((str(p), sha[p], size, mtime, None, None, None, c.error, _now(), None, None))
        for i, c in enumerate(ok):
            p = Path(c.path)
            size, mtime = stats[str(p)]
            rows.append((str(p), sha[p], size, mtime, c.text, json.dumps(c.alternatives), c.score, None, _now(),
                         _blob(visual[i]), _blob(text[i])))
        report.encoded += len(ok)
        with self.lock, self.conn:
            self.conn.execute("BEGIN")
            self._bump()
            self.conn.executemany("DELETE FROM photos WHERE path = ?", [(r[0],) for r in rows])
            self.conn.executemany(INSERT_PHOTO, rows)
        self.refresh()

    # -- queries -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        self.refresh()
        return len(self.visual)

    def photo(self, photo_id: int) -> Match | None:
        with self.lock:
            row = self.conn.execute("SELECT id, path, caption FROM photos WHERE id = ? AND caption IS NOT NULL",
                                    (int(photo_id),)).fetchone()
        return Match(row[0], Path(row[1]), row[2], 1.0) if row else None

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every photo recorded as failed."""
        with self.lock:
            return self.conn.execute("SELECT path, error FROM photos WHERE error IS NOT NULL ORDER BY path").fetchall()

    def _matches(self, scored: list[tuple[int, float]]) -> list[Match]:
        ids = [i for i, _ in scored]
        with self.lock:
            rows = {r[0]: r for r in self.conn.execute(
                f"SELECT id, path, caption FROM photos WHERE id IN ({','.join('?' * len(ids))})", ids)}
        return [Match(i, Path(rows[i][1]), rows[i][2], float(s)) for i, s in scored if i in rows]

    def search(self, text: str, k: int = 8, rerank: bool = False) -> list[Match]:
        """Photos whose captions and image vectors match `text`, best first.

        With `rerank`, the best candidates are re-scored by how likely the
        captioner finds `text` as their caption (slower: candidates are encoded again).
        """
        if not text.strip():
            raise CaptionerError("the search text is empty")
        self.refresh()
        cfg = self.head.cfg if self.head is not None else RetrievalConfig()
        q = query_vectors(self.head, load_sentence_encoder().embed([text]))
        scores, ids = self.text.search(q, max(k, cfg.rerank_pool) if rerank else k)
        scored = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if rerank and scored:
            scored = self._rerank(text, scored, cfg.rerank_weight)
        return self._matches(scored[:k])

    def _rerank(self, text: str, scored: list[tuple[int, float]], weight: float) -> list[tuple[int, float]]:
        features = self._features([i for i, _ in scored])
        kept = [(i, s) for i, s in scored if i in features]
        if not kept:
            return scored
        pooled = torch.stack([features[i][0] for i, _ in kept])
        grid = torch.stack([features[i][1] for i, _ in kept])
        logprob = text_logprob(self.captioner.model, pooled, grid, text)
        return sorted(((i, s + weight * float(lp)) for (i, s), lp in zip(kept, logprob)), key=lambda t: -t[1])

    def _features(self, ids: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Each photo's (pooled, grid) features: encoded from its file, kept for the next queries."""
        with self.lock:
            todo = self._matches([(i, 0.0) for i in ids if i not in self.grids])
        if todo:
            for ok, pooled, grid, _ in encode_photos(self.captioner.encoder, [m.path for m in todo],
                                                     batch_size=16, progress=False):
                with self.lock:
                    for j, p, g in zip(ok, pooled, grid):
                        self.grids[todo[j].id] = (p, g)
                        while len(self.grids) > GRIDS_KEPT:
                            self.grids.popitem(last=False)
        with self.lock:
            return {i: self.grids[i] for i in ids if i in self.grids}

    def similar(self, photo: str | Path | Caption | int, k: int = 8, by: str = "both",
                visual_weight: float = 0.5) -> list[Match]:
        """Gallery photos most like `photo` (a file, a Caption from this captioner, or a gallery id).

        by="visual" compares image vectors, "caption" caption vectors, "both" a
        blend (`visual_weight` of the visual similarity). The photo itself is left out.
        """
        if by not in BY:
            raise CaptionerError(f"unknown similarity {by!r}: choose one of {', '.join(BY)}")
        self.refresh()
        exclude: set[int] = set()
        if isinstance(photo, int):
            with self.lock:
                row = self.conn.execute("SELECT visual, text FROM photos WHERE id = ? AND visual IS NOT NULL",
                                        (photo,)).fetchone()
            if row is None:
                raise CaptionerError(f"the gallery has no photo with id {photo}")
            visual, text = _vector(row[0]), _vector(row[1])
            exclude.add(photo)
        else:
            if not isinstance(photo, Caption):
                photo = self.captioner.caption([photo])[0]
                if photo.error:
                    raise CaptionerError(photo.error)
            visual = _unit(photo.vector)
            text = photo_vectors(self.head, torch.from_numpy(photo.vector[None]),
                                 [[photo.text] + [a for a, _ in photo.alternatives]])[0]
            if Path(photo.path).is_file():
                digest = file_sha256(photo.path)
                with self.lock:
                    exclude |= {r[0] for r in self.conn.execute("SELECT id FROM photos WHERE sha256 = ?", (digest,))}
        caption_part = np.zeros_like(text)
        caption_part[:DIM] = text[:DIM]  # caption vectors only: photo to photo, their captions compared
        weight = {"visual": 1.0, "caption": 0.0, "both": visual_weight}[by]
        wanted = k + len(exclude)
        candidates: set[int] = set()
        if weight > 0:
            candidates |= {int(i) for i in self.visual.search(visual[None], wanted * 4 + 32)[1][0] if i >= 0}
        if weight < 1:
            candidates |= {int(i) for i in self.text.search(caption_part[None], wanted * 4 + 32)[1][0] if i >= 0}
        candidates -= exclude
        if not candidates:
            return []
        ids = sorted(candidates)
        with self.lock:
            score = (weight * (self.visual.vectors(ids) @ visual) if weight > 0 else 0.0) + \
                    ((1 - weight) * (self.text.vectors(ids) @ caption_part) if weight < 1 else 0.0)
        order = np.argsort(-np.asarray(score))[:k]
        return self._matches([(ids[j], float(score[j])) for j in order])

    def close(self) -> None:
        self.conn.close()
        if self.writer_lock is not None:
            self.writer_lock.close()
            self.writer_lock = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
