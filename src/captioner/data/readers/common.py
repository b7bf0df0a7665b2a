"""What every corpus reader shares: the records it makes, the problems it counts, the collector that
checks each caption as it is added, and small helpers for reading files."""
from __future__ import annotations

import codecs
import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ...errors import CaptionerError
from ..text import clean

SPLITS = ("train", "dev", "test")

EXAMPLES_PER_KIND = 5

# Split names found in the wild, mapped to ours (Karpathy's "restval" is extra training data).

_SPLIT_NAMES = {"train": "train", "restval": "train", "dev": "dev", "val": "dev",
                "valid": "dev", "validation": "dev", "test": "test"}

MALFORMED = "malformed"

UNDECODABLE = "undecodable"

MISSING_IMAGE = "missing image"

EMPTY_CAPTION = "empty caption"

DUPLICATE = "duplicate"

UNKNOWN_SPLIT = "unknown split"

SPLIT_CONFLICT = "split conflict"

_LABELS = {
    MALFORMED: ("malformed entry", "malformed entries"),
    UNDECODABLE: ("entry that is not UTF-8", "entries that are not UTF-8"),
    MISSING_IMAGE: ("caption for a missing image", "captions for a missing image"),
    EMPTY_CAPTION: ("empty caption", "empty captions"),
    DUPLICATE: ("duplicate", "duplicates"),
    UNKNOWN_SPLIT: ("caption with an unknown split", "captions with an unknown split"),
    SPLIT_CONFLICT: ("split conflict", "split conflicts"),
}

def plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"

@dataclass
class Problem:
    """One skipped line or entry: its kind, where it is (`file:line` or `file: image X`) and why."""

    kind: str
    where: str
    detail: str

@dataclass
class Problems:
    """What a reader skipped: a count per kind and the first few of each kind."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[Problem]] = field(default_factory=dict)
    first: Problem | None = None

    def add(self, kind: str, where: str, detail: str) -> None:
        problem = Problem(kind, where, detail)
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_PER_KIND:
            kept.append(problem)
        if self.first is None:
            self.first = problem

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts),
                "examples": {kind: [{"where": p.where, "detail": p.detail} for p in kept]
                             for kind, kept in self.examples.items()}}

    def lines(self) -> list[str]:
        """One human-readable line per kind of problem, with its first location."""
        return [f"skipped {plural(n, *_LABELS[kind])}, the first at "
                f"{self.examples[kind][0].where} ({self.examples[kind][0].detail})"
                for kind, n in self.counts.items()]

@dataclass
class Record:
    """One usable caption: its image (relative to the image root), split, original text and clean tokens."""

    image: str
    split: str
    raw: str
    tokens: list[str]

@dataclass
class Corpus:
    """What a reader returns: the usable captions, what was skipped, and notes that are not problems."""

    image_root: Path
    records: list[Record]
    problems: Problems
    notes: list[str]

def hash_split(image: str) -> str:
    """The split of an image in a corpus that has none: 90% train, 5% dev, 5% test.

    Decided by a CRC32 of the image name (never Python's salted hash()), so the
    split is the same on every run and machine and all captions of an image
    land in one split.
    """
    bucket = zlib.crc32(image.encode("utf-8", "surrogatepass")) % 100
    return "train" if bucket < 90 else "dev" if bucket < 95 else "test"

class ImageFiles:
    """Which image files exist under a root, from one directory listing per folder (cheap on big corpora)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise CaptionerError(f"The image folder {root} does not exist; pass the folder that holds the photos.")
        self.root = root
        self._names: dict[PurePosixPath, set[str]] = {}

    def __contains__(self, image: str) -> bool:
        path = PurePosixPath(image)
        if path.is_absolute() or ".." in path.parts:
            return False
        if path.parent not in self._names:
            folder = self.root / path.parent
            self._names[path.parent] = set(os.listdir(folder)) if folder.is_dir() else set()
        return path.name in self._names[path.parent]

def is_text(s: str) -> bool:
    """False for strings holding bytes that were not UTF-8 (kept as lone surrogates when decoding JSON)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

class Collector:
    """Checks each caption a reader finds, and keeps it as a Record or counts why not."""

    def __init__(self, image_root: Path) -> None:
        self.images = ImageFiles(image_root)
        self.corpus = Corpus(image_root.resolve(), [], Problems(), [])
        self.problems = self.corpus.problems
        self.left_out: set[str] = set()
        self._seen: set[object] = set()
        self._split_of: dict[str, str] = {}

    def repeated(self, key: object) -> bool:
        """True if `key` (a caption id) was seen before; remembers it otherwise."""
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def add(self, where: str, image: str, raw: str, split: str | None) -> None:
        """Keep one caption; `split` None means its image is in no split, so it is left out (not a problem)."""
        image, raw = image.strip(), raw.strip()
        tokens = clean(raw)
        if not is_text(image) or not is_text(raw):
            self.problems.add(UNDECODABLE, where, "holds bytes that are not UTF-8")
        elif not image:
            self.problems.add(MALFORMED, where, "no image name")
        elif split is not None and split not in SPLITS:
            self.problems.add(UNKNOWN_SPLIT, where, f"unknown split {split!r}, expected train, dev (or val) or test")
        elif image not in self.images:
            self.problems.add(MISSING_IMAGE, where, f"{image} is not in {self.corpus.image_root}")
        elif split is None:
            self.left_out.add(image)
        elif not tokens:
            self.problems.add(EMPTY_CAPTION, where, f"the caption {raw!r} has no words")
        elif self._split_of.setdefault(image, split) != split:
            self.problems.add(SPLIT_CONFLICT, where, f"{image} is already in the {self._split_of[image]} split")
        else:
            self.corpus.records.append(Record(image, split, raw, tokens))

def read_bytes(path: Path, expected: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CaptionerError(f"{path} does not exist; expected {expected}.") from None
    except OSError as e:
        raise CaptionerError(f"Cannot read {path} ({e.strerror}); expected {expected}.") from None

def lines(name: str, data: bytes, problems: Problems) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of file `name`, decoded one by one so a non-UTF-8 line
    is one problem."""
    for number, raw in enumerate(data.removeprefix(codecs.BOM_UTF8).split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            problems.add(UNDECODABLE, f"{name}:{number}",
                         f"byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8")
            continue
        if line.strip():
            yield number, line

def split_name(name: str) -> str:
    """Our name for a split ("val" -> "dev"); an unknown name comes back as it is, to be reported."""
    return _SPLIT_NAMES.get(name.strip().lower(), name)

def add_row(col: Collector, where: str, image: str, caption: str, split: str | None) -> None:
    """One table row: a repeated (image, caption) pair is a duplicate; no split means the hash split."""
    if col.repeated((image.strip(), caption.strip())):
        col.problems.add(DUPLICATE, where, "the same image and caption as an earlier line")
    else:
        col.add(where, image, caption, split_name(split) if split and split.strip() else hash_split(image.strip()))

def load_json(path: Path, expected: str) -> object:
    """A whole JSON file; bytes that are not UTF-8 survive as lone surrogates, caught per caption later."""
    text = read_bytes(path, expected).decode("utf-8-sig", errors="surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionerError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); expected {expected}.") from None

def beside_source(source: Path) -> Path:
    """Where a captions file's photos usually are: its folder's Images/ (or images/), else the folder itself."""
    for name in ("Images", "images"):
        if (source.parent / name).is_dir():
            return source.parent / name
    return source.parent
