"""The gallery: a collection of photos and video scenes, captioned and embedded once, to find by likeness or by
description.

Files, side by side:
  gallery.db             SQLite (WAL): the catalogue (catalogue.py), the truth
  gallery.db.vectors     the vector indexes (vectors.py), derived from it
  gallery.db.lock        held while `index` writes (indexer.py)

Every batch of photos is committed in one transaction; a kill at any moment
leaves the last committed batch, and vector indexes that are missing or too
old are rebuilt from the catalogue. Readers may query (queries.py) from
several threads while one indexer writes, and see each batch it commits.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from ..extras import require

require("gallery", "faiss")

from ..captioning import Caption, Captioner
from ..data.images import file_sha256
from ..errors import CaptionerError
from ..models.embedding import FILE
from ..models.sentences import DIM
from . import queries
from .catalogue import FORMAT, SCHEMA, Catalogue
from .indexer import IndexReport, index
from .queries import BY, Match
from .vectors import Vectors

__all__ = ["BY", "FORMAT", "SCHEMA", "Gallery", "IndexReport", "Match", "default_db"]


def default_db() -> Path:
    """$CAPTIONER_GALLERY, else the gallery in the user's data folder."""
    if os.environ.get("CAPTIONER_GALLERY"):
        return Path(os.environ["CAPTIONER_GALLERY"]).expanduser()
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "captioner" / "gallery.db"


class Gallery:
    """A gallery on disk and the captioner that fills and queries it. Safe to query from several threads."""

    def __init__(self, catalogue: Catalogue, captioner: Captioner):
        self.catalogue = catalogue
        self.captioner = captioner
        captioner.search = True  # every photo it captions for the gallery gets its place in the search space
        self.embedding = captioner.embedding  # the photo-text embedding search uses (models/embedding.py), or None
        self.vectors = Vectors(Path(f"{catalogue.db}.vectors"), captioner.encoder.spec.dim,
                               DIM * (1 if self.embedding is None else 2))
        self.grids: OrderedDict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()  # queries.py
        self.grids_lock = threading.Lock()

    @property
    def db(self) -> Path:
        return self.catalogue.db

    @classmethod
    def open(cls, db: str | Path | None = None, model: str | Path | None = None,
             captioner: Captioner | None = None, device: str | torch.device = "auto") -> "Gallery":
        """An existing gallery, to query with `captioner`, or with the model in `model` (default: the shipped
        one) loaded on `device` (see models.device.resolve)."""
        db = Path(db).expanduser() if db else default_db()
        if not db.is_file():
            raise CaptionerError(f"there is no gallery at {db}: build one with `captioner index PHOTOS... --db {db}`")
        return cls._connect(db, model, captioner, device, create=False)

    @classmethod
    def create(cls, db: str | Path | None = None, model: str | Path | None = None,
               captioner: Captioner | None = None, rebuild: bool = False,
               device: str | torch.device = "auto") -> "Gallery":
        """A gallery to index into: opened if it exists (emptied first with `rebuild`), else made; its captioner
        as for `open`."""
        db = Path(db).expanduser() if db else default_db()
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CaptionerError(f"cannot make the folder {db.parent} for the gallery ({e.strerror or e}): choose a "
                                 "--db in a folder you can write") from None
        return cls._connect(db, model, captioner, device, create=True, rebuild=rebuild)

    @classmethod
    def _connect(cls, db: Path, model, captioner, device, create: bool, rebuild: bool = False) -> "Gallery":
        captioner = captioner or Captioner.load(model, device=device)
        folder = captioner.model.folder
        model_id = "-".join([file_sha256(folder / "model.safetensors")[:16]]
                            + ([file_sha256(folder / FILE)[:16]] if captioner.embedding is not None else []))
        gallery = cls(Catalogue.connect(db, model_id, str(folder), create, rebuild), captioner)
        try:
            gallery.refresh()
        except BaseException:
            gallery.close()
            raise
        return gallery

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def refresh(self) -> None:
        """Catch the vector indexes up with what an indexer committed since."""
        with self.catalogue.snapshot() as conn:
            self.vectors.catch_up(conn)

    def save_vectors(self) -> None:
        """Save the (writer's) vector indexes beside the catalogue."""
        with self.catalogue.explained(), self.catalogue.lock:
            self.vectors.save(self.catalogue.conn)

    def index(self, roots: list[str | Path], progress: bool = True, batch_size: int = 16,
              stream=None, every: float = 1.0) -> IndexReport:
        """Bring the gallery up to date with the photos and videos under `roots` (see indexer.py).

        `stream` captions the photos (default: this gallery's captioner's `stream`;
        `distributed.batch.caption_stream` captions them on a Ray cluster while this process writes); videos
        are read here, scene by scene, a frame sampled every `every` seconds.
        """
        return index(self, roots, progress, batch_size, stream, every)

    def __len__(self) -> int:
        with self.catalogue.snapshot() as conn:
            self.vectors.catch_up(conn)
            return len(self.vectors)

    def photo(self, photo_id: int) -> Match | None:
        """The photo or video scene with this id, if captioned."""
        return queries.photo(self, photo_id)

    def scene(self, video: str | Path, seconds: float = 0.0) -> Match | None:
        return queries.scene(self, video, seconds)

    def keyframe(self, scene_id: int) -> bytes | None:
        """A video scene's keyframe thumbnail (WebP, at most 320 pixels wide and high), or None."""
        return self.catalogue.keyframe(scene_id)

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every photo recorded as failed."""
        return self.catalogue.failures()

    def search(self, text: str, k: int = 8, rerank: bool = False) -> list[Match]:
        return queries.search(self, text, k, rerank)

    def similar(self, photo: str | Path | Caption | int, k: int = 8, by: str = "both",
                visual_weight: float = 0.5) -> list[Match]:
        return queries.similar(self, photo, k, by, visual_weight)

    scene.__doc__ = queries.scene.__doc__
    search.__doc__ = queries.search.__doc__
    similar.__doc__ = queries.similar.__doc__

    def close(self) -> None:
        self.catalogue.close()
