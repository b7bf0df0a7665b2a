"""The catalogue: the gallery's SQLite database, the truth every other part is derived from.

One row per photo (path, content hash, size, modification time, caption, the
beam's alternatives, score, tags, when indexed, and the error of its last
failed read, if any: a photo that never got a caption has only that) with a
float16 copy of its vectors, under an id no other photo ever gets. A video is
a row per scene (`scene` 1, 2, ... at the video's path, with its start and end
in seconds and a WebP keyframe thumbnail; a photo's `scene` is 0), each an item
of the gallery like a photo. Every
writing transaction bumps the catalogue's generation first, and each row
records the generation that wrote it (a trigger logs removed rows the same
way), so a reader holding vectors of an older generation catches up by reading
only what changed.

A `Catalogue` is one connection, used by one thread at a time under its lock;
`snapshot()` is a read transaction: everything read inside it is one
committed state, whatever a writer commits meanwhile. SQLite's errors a user
can cause (another process holding the file, no permission to write, a full
or failing disk, a damaged file, a file that is no database) are raised as
one sentence each, naming the gallery.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import CaptionerError
from ..version import __version__

FORMAT = 1
BUSY_SECONDS = 30.0  # how long a statement waits for another process's lock on the file before giving up

# AUTOINCREMENT: a photo's id is never given to another photo, so an old id (a photo's URL, a cached
# re-ranking) never finds another photo.
PHOTOS = """(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
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
    generation INTEGER NOT NULL DEFAULT 0,
    tags TEXT,
    scene INTEGER NOT NULL DEFAULT 0,
    scene_start REAL,
    scene_end REAL,
    keyframe BLOB,
    UNIQUE (path, scene)
)"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS photos {PHOTOS};
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

COLUMNS = ("path", "sha256", "size", "mtime_ns", "caption", "alternatives", "score", "error", "indexed_at",
           "visual", "text", "tags", "scene", "scene_start", "scene_end", "keyframe")
INSERT_PHOTO = f"INSERT INTO photos ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
UPGRADES = {"tags": "ALTER TABLE photos ADD COLUMN tags TEXT",
            "scene": "ALTER TABLE photos ADD COLUMN scene INTEGER NOT NULL DEFAULT 0",
            "scene_start": "ALTER TABLE photos ADD COLUMN scene_start REAL",
            "scene_end": "ALTER TABLE photos ADD COLUMN scene_end REAL",
            "keyframe": "ALTER TABLE photos ADD COLUMN keyframe BLOB"}
"""Columns added since format 1 and how to add them: an older gallery is upgraded in place when opened."""
EVERY_COLUMN = ", ".join(("id", "generation", *COLUMNS))
NEW_TABLE = f"""
BEGIN IMMEDIATE;
CREATE TABLE photos_new {PHOTOS};
CREATE TEMP TABLE kept_sequence AS
    SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'photos'), 0) AS seq;
INSERT INTO photos_new ({EVERY_COLUMN}) SELECT {EVERY_COLUMN} FROM photos;
DROP TABLE photos;
ALTER TABLE photos_new RENAME TO photos;
DELETE FROM sqlite_sequence WHERE name = 'photos';
INSERT INTO sqlite_sequence VALUES ('photos', max((SELECT seq FROM kept_sequence),
                                                 coalesce((SELECT max(id) FROM photos), 0),
                                                 coalesce((SELECT max(id) FROM removed), 0)));
DROP TABLE kept_sequence;
{SCHEMA}
COMMIT;
"""
"""Galleries written before photo ids were AUTOINCREMENT, or before videos (a path was unique: a video has a row
per scene), get today's table, their rows, ids and generations kept (SQLite cannot change a table's constraints:
the table is copied), and their next id above every id they still know."""


@dataclass
class Row:
    """One photo's (or video scene's) row as queries see it."""

    id: int
    path: Path
    caption: str
    tags: list[dict]  # {"label", "p", "word"}, likeliest first
    sha256: str  # of the photo's content when it was captioned
    scene: int = 0  # a video's scene 1, 2, ...; 0: a photo
    start: float | None = None  # a scene's start and end in its video, seconds
    end: float | None = None

    @classmethod
    def of(cls, r: tuple) -> "Row":
        return cls(r[0], Path(r[1]), r[2], json.loads(r[3]) if r[3] else [], r[4], r[5], r[6], r[7])


ROW = "SELECT id, path, caption, tags, sha256, scene, scene_start, scene_end FROM photos"


def blob(v: np.ndarray) -> bytes:
    return np.asarray(v, np.float16).tobytes()


def vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.float16).astype(np.float32)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def database_error(db: Path, e: sqlite3.Error) -> CaptionerError | None:
    """The one sentence for an SQLite error a user can cause on the gallery `db` (None: not one of those)."""
    locked = f"{db} is locked by another process: close the program that uses it, or try again when it is done"
    unwritable = f"{db} cannot be written: check the permissions of the file and its folder, or choose another --db"
    sentence = {
        sqlite3.SQLITE_BUSY: locked,
        sqlite3.SQLITE_LOCKED: locked,
        sqlite3.SQLITE_READONLY: unwritable,
        sqlite3.SQLITE_PERM: unwritable,
        sqlite3.SQLITE_CANTOPEN: f"{db} cannot be opened: check that it is a file (not a folder) that you may read "
                                 "and write, in a folder that you may write",
        sqlite3.SQLITE_IOERR: f"{db} could not be read or written because of a disk error ({e}): check the disk, then "
                              "try again",
        sqlite3.SQLITE_FULL: f"the disk holding {db} is full: free some space, then try again",
        sqlite3.SQLITE_CORRUPT: f"{db} is damaged ({e}): move it away and index the photos again",
        sqlite3.SQLITE_NOTADB: f"{db} is not a captioner gallery (not an SQLite database): choose another --db",
    }.get(getattr(e, "sqlite_errorcode", 0) & 0xFF)  # the primary code of an extended one
    return CaptionerError(sentence) if sentence else None


class Catalogue:
    def __init__(self, db: Path, conn: sqlite3.Connection):
        self.db = db
        self.conn = conn
        self.lock = threading.RLock()
        self.writer_lock = None

    @classmethod
    def connect(cls, db: Path, model_id: str, model_folder: str, create: bool, rebuild: bool) -> "Catalogue":
        """The catalogue at `db`, checked against the model (made, with `create`, if new; emptied with `rebuild`)."""
        try:
            conn = sqlite3.connect(db, timeout=BUSY_SECONDS, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise database_error(db, e) or CaptionerError(f"{db} cannot be opened ({e})") from None
        catalogue = cls(db, conn)
        try:
            catalogue.conn.execute("PRAGMA journal_mode=WAL")
            catalogue.conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
            if create:
                catalogue._take_writer_lock()
            catalogue._check_or_init(model_id, model_folder, create, rebuild)
        except BaseException as e:
            catalogue.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise database_error(db, e) or CaptionerError(f"{db} is not a captioner gallery ({e})") from None
            raise
        return catalogue

    def _take_writer_lock(self) -> None:
        self.writer_lock = open(f"{self.db}.lock", "w")
        try:
            fcntl.flock(self.writer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CaptionerError(f"another `captioner index` is writing {self.db}: wait for it to finish") from None

    def meta(self) -> dict[str, str]:
        try:
            return dict(self.conn.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:  # no meta table: empty, or not ours
            return {}

    def _check_or_init(self, model_id: str, model_folder: str, create: bool, rebuild: bool) -> None:
        meta = self.meta()
        if not meta:
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables or not create:
                raise CaptionerError(f"{self.db} is not a captioner gallery")
            self.conn.executescript(SCHEMA)
            with self.write():
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", str(FORMAT)), ("captioner", __version__), ("model", model_id),
                    ("model_folder", model_folder), ("generation", "0"), ("pruned", "0"),
                    ("gallery", uuid.uuid4().hex)])  # its own id: vectors saved beside another never pass
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
        self._upgrade(writing=create)
        if rebuild:
            with self.write():
                self.conn.execute("DELETE FROM photos")
                self.conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [
                    (model_id, "model"), (model_folder, "model_folder"), (__version__, "captioner")])
        elif meta["model"] != model_id and meta["model_folder"] == model_folder:
            raise CaptionerError(f"{self.db} was indexed with an earlier version of the model in {model_folder} (its "
                                 "captioner or its search embedding has changed since): index it again with "
                                 f"`captioner index PHOTOS... --db {self.db} --rebuild`")
        elif meta["model"] != model_id:
            raise CaptionerError(f"{self.db} was indexed with another model ({meta['model_folder']}): "
                                 f"open it with that model (--model), or index it again with this one (--rebuild)")

    def _upgrade(self, writing: bool) -> None:
        """Bring an older gallery up to date in place: add the columns it lacks (its photos' new fields stay empty
        until indexed again) and, opened to write (the writer lock held: no one else upgrades), give it an id
        and today's table (photo ids never reused, a row per video scene). A reader needs neither, and may not be
        allowed to write."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(photos)")}
        for column, statement in UPGRADES.items():
            if column not in have:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it meanwhile
                    self.conn.execute(statement)
        if not writing:
            return
        if self.conn.execute("SELECT 1 FROM meta WHERE key = 'gallery'").fetchone() is None:
            self.conn.execute("INSERT INTO meta VALUES ('gallery', ?)", (uuid.uuid4().hex,))
        photos = self.conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'photos'").fetchone()
        if "AUTOINCREMENT" not in photos[0].upper() or "UNIQUE (path, scene)" not in photos[0]:
            try:
                self.conn.executescript(NEW_TABLE)
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """SQLite's errors a user can cause, raised inside, as their one sentence (see `database_error`)."""
        try:
            yield
        except sqlite3.Error as e:
            if (explained := database_error(self.db, e)) is None:
                raise
            raise explained from None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A writing transaction that starts a new generation, so its rows carry it; committed at the end."""
        with self.explained(), self.lock, self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            yield self.conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one committed state of the catalogue for everything read inside it."""
        with self.explained(), self.lock, self.conn:
            self.conn.execute("BEGIN")
            yield self.conn

    def rows(self, ids: list[int]) -> dict[int, Row]:
        """The captioned photos among `ids` (call inside a snapshot to match vectors read there)."""
        with self.lock:
            found = self.conn.execute(f"{ROW} WHERE caption IS NOT NULL AND id IN ({','.join('?' * len(ids))})",
                                      ids).fetchall()
        return {r[0]: Row.of(r) for r in found}

    def keyframe(self, item_id: int) -> bytes | None:
        """A video scene's keyframe thumbnail (WebP), or None (a photo, or no such item)."""
        with self.lock:
            found = self.conn.execute("SELECT keyframe FROM photos WHERE id = ?", (item_id,)).fetchone()
        return found[0] if found else None

    def failures(self) -> list[tuple[str, str]]:
        with self.lock:
            return self.conn.execute("SELECT DISTINCT path, error FROM photos WHERE error IS NOT NULL "
                                     "ORDER BY path").fetchall()

    def close(self) -> None:
        self.conn.close()
        if self.writer_lock is not None:
            self.writer_lock.close()
            self.writer_lock = None
