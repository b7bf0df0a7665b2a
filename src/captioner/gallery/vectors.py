"""The gallery's vector indexes (image vectors and text vectors), kept in step with the catalogue.

They are saved beside the catalogue (`DB.vectors`, tagged with the catalogue
generation they reflect, the catalogue's id and its model) and caught up by
reading the rows written or removed since; after a save the removal log before
it is pruned. Vectors that are missing, partial, too old to catch up from, of
another catalogue or model, or of other sizes are rebuilt from the catalogue,
which holds a copy of every vector.

`catch_up` must run inside a catalogue snapshot, and searches of the same
query under the same catalogue lock: a reader never sees a half-synced index.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from ..files import atomic_path
from .catalogue import vector
from .vectorindex import VectorIndex


class Vectors:
    def __init__(self, path: Path, visual_dim: int, text_dim: int):
        self.path = path
        self.visual_dim = visual_dim
        self.text_dim = text_dim
        self.generation = -1
        self.visual = VectorIndex(visual_dim)
        self.text = VectorIndex(text_dim)

    def __len__(self) -> int:
        return len(self.visual)

    def catch_up(self, conn: sqlite3.Connection) -> None:
        """Read what the catalogue committed since our generation (inside the caller's snapshot)."""
        generation = _meta_int(conn, "generation")
        if generation == self.generation:
            return
        if self.generation < _meta_int(conn, "pruned"):  # the removals since we last looked are forgotten
            self.generation = self._load(conn)
        written = conn.execute("SELECT id, visual, text FROM photos WHERE generation > ?",
                               (self.generation,)).fetchall()
        gone = [r[0] for r in conn.execute("SELECT id FROM removed WHERE generation > ?", (self.generation,))]
        self.visual.remove(gone + [r[0] for r in written])
        self.text.remove(gone + [r[0] for r in written])
        written = [r for r in written if r[1] is not None]  # failed photos have no vectors
        if written:
            ids = np.array([r[0] for r in written])
            self.visual.add(ids, np.stack([vector(r[1]) for r in written]))
            self.text.add(ids, np.stack([vector(r[2]) for r in written]))
        self.generation = generation

    def _load(self, conn: sqlite3.Connection) -> int:
        """The saved indexes if this catalogue's, of this model and these sizes, and recent enough to catch up
        from, else empty ones; their generation."""
        try:
            with safe_open(str(self.path), "np") as f:
                metadata = f.metadata()
                saved = int(metadata["generation"])
                if (_meta_int(conn, "pruned") <= saved <= _meta_int(conn, "generation")
                        and all(metadata.get(key) == value for key, value in _identity(conn).items())):
                    visual = VectorIndex.from_bytes(f.get_tensor("visual"))
                    text = VectorIndex.from_bytes(f.get_tensor("text"))
                    if (visual.dim, text.dim) == (self.visual_dim, self.text_dim):
                        self.visual, self.text = visual, text
                        return saved
        except Exception:  # missing, partial or foreign: the catalogue has everything to rebuild them
            pass
        self.visual = VectorIndex(self.visual_dim)
        self.text = VectorIndex(self.text_dim)
        return -1  # empty: catching up reads every row

    def save(self, conn: sqlite3.Connection) -> None:
        """Save the indexes (up to date: the writer's), then prune the removal log they make unneeded.

        The caller holds the catalogue's lock and no transaction.
        """
        with atomic_path(self.path) as tmp:
            save_file({"visual": self.visual.to_bytes(), "text": self.text.to_bytes()}, str(tmp),
                      metadata={"generation": str(self.generation)} | _identity(conn))
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM removed WHERE generation <= ?", (self.generation,))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'pruned'", (str(self.generation),))


def _meta_int(conn: sqlite3.Connection, key: str) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def _identity(conn: sqlite3.Connection) -> dict[str, str]:
    """What saved vectors must have been made for: this catalogue (its id) and the model that indexed it."""
    return dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('gallery', 'model')"))
