"""The corpus readers, by name: each turns one format into the same records (see common.py).

A reader is a module here with a function registered by `@register`: it takes
the corpus's source (a file or folder) and the folder of its photos, and
returns a Corpus. `captioner prepare KIND` lists the names, and their help,
from READERS; adding a format is a module and its registration (and an import
below).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import CaptionerError
from .common import Corpus, beside_source


@dataclass(frozen=True)
class Reader:
    name: str
    read: Callable[[Path, Path], Corpus]  # (source, photo folder) -> Corpus
    source: str  # what SOURCE is, for --help
    photos: Callable[[Path, Path], Path]  # the photo folder when none is given, from (source, prepare's out folder)


READERS: dict[str, Reader] = {}


def register(name: str, source: str, photos: Callable[[Path, Path], Path] = lambda source, out: beside_source(source)):
    """Register the decorated function as the reader of corpus kind `name`."""
    def add(read: Callable[[Path, Path], Corpus]) -> Callable[[Path, Path], Corpus]:
        READERS[name] = Reader(name, read, source, photos)
        return read
    return add


def read(kind: str, source: str | Path, photos: str | Path | None, out: Path) -> Corpus:
    """The corpus at `source` read as `kind`, its photos in `photos` (default: where that kind keeps them)."""
    if kind not in READERS:
        raise CaptionerError(f"unknown corpus kind {kind!r}: choose one of {', '.join(sorted(READERS))}")
    reader = READERS[kind]
    source = Path(source)
    return reader.read(source, Path(photos) if photos else reader.photos(source, Path(out)))


from . import coco, flickr8k, img2dataset, karpathy, tables  # noqa: E402, F401  (each registers its readers)
