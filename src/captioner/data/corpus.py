"""Caption corpora: many file formats in, one prepared form out.

Every reader turns its format into the same records (image, split, original
caption, clean tokens) and counts what it had to skip, so one flawed line costs
one caption, never the whole run. `prepare` writes the result as captions.json,
vocab.json and report.json; `load_prepared` reads it back for training and
evaluation.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import CaptionerError
from ..files import atomic_path, write_atomic
from .images import PHOTO_SUFFIXES, file_sha256
from .text import Vocab, clean

FORMAT = 1
SPLITS = ("train", "dev", "test")
KINDS = ("flickr8k", "csv", "karpathy", "coco", "table", "img2dataset")
EXAMPLES_PER_KIND = 5

# Split names found in the wild, mapped to ours (Karpathy's "restval" is extra training data).
_SPLIT_NAMES = {"train": "train", "restval": "train", "dev": "dev", "val": "dev",
                "valid": "dev", "validation": "dev", "test": "test"}

FLICKR8K_TOKENS = "Flickr8k.token.txt"
FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}

# Problem kinds, with the words a summary uses for one and for many.
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


def _plural(n: int, one: str, many: str) -> str:
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
        return [f"skipped {_plural(n, *_LABELS[kind])}, the first at "
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


class _ImageFiles:
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


def _is_text(s: str) -> bool:
    """False for strings holding bytes that were not UTF-8 (kept as lone surrogates when decoding JSON)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Collector:
    """Checks each caption a reader finds, and keeps it as a Record or counts why not."""

    def __init__(self, image_root: Path) -> None:
        self.images = _ImageFiles(image_root)
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
        if not _is_text(image) or not _is_text(raw):
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


def _read_bytes(path: Path, expected: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CaptionerError(f"{path} does not exist; expected {expected}.") from None
    except OSError as e:
        raise CaptionerError(f"Cannot read {path} ({e.strerror}); expected {expected}.") from None


def _lines(name: str, data: bytes, problems: Problems) -> Iterator[tuple[int, str]]:
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


def _split_name(name: str) -> str:
    """Our name for a split ("val" -> "dev"); an unknown name comes back as it is, to be reported."""
    return _SPLIT_NAMES.get(name.strip().lower(), name)


def read_flickr8k(root: str | Path, image_root: str | Path | None = None) -> Corpus:
    """Flickr8k as distributed: Flickr8k.token.txt, the three split files and Images/ (or `image_root`).

    Photos in no split file are left out and counted in a note.
    """
    root = Path(root)
    expected = (f"a Flickr8k folder holding {FLICKR8K_TOKENS}, the three Flickr_8k.*Images.txt "
                "split files and Images/")
    if not root.is_dir():
        raise CaptionerError(f"{root} is not a folder; expected {expected}.")
    texts = {name: _read_bytes(root / name, expected) for name in (FLICKR8K_TOKENS, *FLICKR8K_SPLIT_FILES.values())}
    col = _Collector(Path(image_root) if image_root else root / "Images")
    split_of: dict[str, str] = {}
    for split, name in FLICKR8K_SPLIT_FILES.items():
        for number, line in _lines(name, texts[name], col.problems):
            image = line.strip()
            if split_of.setdefault(image, split) != split:
                col.problems.add(SPLIT_CONFLICT, f"{name}:{number}",
                                 f"{image} is already in the {split_of[image]} split")
    for number, line in _lines(FLICKR8K_TOKENS, texts[FLICKR8K_TOKENS], col.problems):
        where = f"{FLICKR8K_TOKENS}:{number}"
        fields = line.split("\t")
        if len(fields) != 2:
            col.problems.add(MALFORMED, where,
                             f"expected IMAGE#N<tab>caption, found {len(fields)} tab-separated fields")
            continue
        key, caption = fields
        image, hash_sign, n = key.strip().rpartition("#")
        if not hash_sign or not n.isdigit():
            col.problems.add(MALFORMED, where, f"{key!r} does not end in #N")
        elif col.repeated(key.strip()):
            col.problems.add(DUPLICATE, where, f"{key.strip()} appears twice")
        else:
            col.add(where, image, caption, split_of.get(image.strip()))
    if col.left_out:
        col.corpus.notes.append(f"{_plural(len(col.left_out), 'photo', 'photos')} with captions "
                                "in no split file left out")
    return col.corpus


def _add_row(col: _Collector, where: str, image: str, caption: str, split: str | None) -> None:
    """One table row: a repeated (image, caption) pair is a duplicate; no split means the hash split."""
    if col.repeated((image.strip(), caption.strip())):
        col.problems.add(DUPLICATE, where, "the same image and caption as an earlier line")
    else:
        col.add(where, image, caption, _split_name(split) if split and split.strip() else hash_split(image.strip()))


def _read_csv(path: Path, data: bytes, col: _Collector, expected: str) -> None:
    """Rows of a CSV file whose header names image, caption and optionally split (other columns ignored)."""
    header: list[str] | None = None
    for number, line in _lines(path.name, data, col.problems):
        where = f"{path.name}:{number}"
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as e:
            col.problems.add(MALFORMED, where, f"not a CSV line ({e})")
            continue
        if header is None:
            header = [name.strip().lower() for name in fields]
            if "image" not in header or "caption" not in header:
                raise CaptionerError(f"{path} does not start with a header naming the image and caption "
                                     f"columns; expected {expected}.")
        elif len(fields) != len(header):
            col.problems.add(MALFORMED, where, f"expected {len(header)} comma-separated fields, found "
                                               f"{len(fields)} (a caption holding commas must be quoted)")
        else:
            row = dict(zip(header, fields))
            _add_row(col, where, row["image"], row["caption"], row.get("split"))
    if header is None:
        raise CaptionerError(f"{path} is empty; expected {expected}.")


def _default_image_root(source: Path) -> Path:
    """Where a captions file's photos usually are: its folder's Images/ (or images/), else the folder itself."""
    for name in ("Images", "images"):
        if (source.parent / name).is_dir():
            return source.parent / name
    return source.parent


def read_captions_csv(path: str | Path, image_root: str | Path) -> Corpus:
    """The Kaggle Flickr8k/Flickr30k captions.txt (CSV, header `image,caption`); splits by hash_split."""
    path = Path(path)
    expected = "a Kaggle captions.txt: CSV with the header image,caption"
    data = _read_bytes(path, expected)
    col = _Collector(Path(image_root))
    _read_csv(path, data, col, expected)
    return col.corpus


def read_table(path: str | Path, image_root: str | Path) -> Corpus:
    """A plain CSV (header image, caption, optional split) or JSONL (objects with those keys).

    Rows without a split get hash_split. JSONL is recognised by its first
    character being "{".
    """
    path = Path(path)
    expected = "a CSV file with a header naming image, caption and optionally split, or JSONL with those keys"
    data = _read_bytes(path, expected)
    col = _Collector(Path(image_root))
    if not data.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        _read_csv(path, data, col, expected)
        return col.corpus
    for number, line in _lines(path.name, data, col.problems):
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            col.problems.add(MALFORMED, where, f"not JSON ({e.msg})")
            continue
        if (not isinstance(row, dict) or not isinstance(row.get("image"), str)
                or not isinstance(row.get("caption"), str)
                or not (row.get("split") is None or isinstance(row["split"], str))):
            col.problems.add(MALFORMED, where,
                             "expected an object with the text keys image, caption and optionally split")
        else:
            _add_row(col, where, row["image"], row["caption"], row.get("split"))
    return col.corpus


def _load_json(path: Path, expected: str) -> object:
    """A whole JSON file; bytes that are not UTF-8 survive as lone surrogates, caught per caption later."""
    text = _read_bytes(path, expected).decode("utf-8-sig", errors="surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionerError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); expected {expected}.") from None


def read_karpathy(path: str | Path, image_root: str | Path) -> Corpus:
    """Karpathy's split files (dataset_flickr8k.json, dataset_coco.json, ...); val -> dev, restval -> train."""
    path = Path(path)
    expected = ('a Karpathy split file like dataset_flickr8k.json: {"images": [{"filename", "split", '
                '"sentences": [{"raw"}]}]}')
    data = _load_json(path, expected)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not any(isinstance(e, dict) and "sentences" in e for e in entries):
        raise CaptionerError(f"{path} is not a Karpathy split file; expected {expected}.")
    col = _Collector(Path(image_root))
    for number, entry in enumerate(entries):
        e = entry if isinstance(entry, dict) else {}
        filename, filepath, split, sentences = (e.get("filename"), e.get("filepath", ""),
                                                e.get("split"), e.get("sentences"))
        if not all(isinstance(v, str) for v in (filename, filepath, split)) or not isinstance(sentences, list):
            col.problems.add(MALFORMED, f"{path.name}: images[{number}]",
                             "expected the text keys filename and split, and a list of sentences")
            continue
        image = PurePosixPath(filepath, filename).as_posix()
        where = f"{path.name}: image {image}"
        for i, sentence in enumerate(sentences):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                col.problems.add(MALFORMED, where, f"sentence {i} has no raw text")
            elif col.repeated((image, i)):
                col.problems.add(DUPLICATE, where, f"{image} is listed twice")
            else:
                col.add(where, image, raw, _split_name(split))
    return col.corpus


def _coco_split(path: Path, split: str | None) -> str:
    if split is not None:
        if _split_name(split) not in SPLITS:
            raise CaptionerError(f"Unknown split {split!r}; expected train, dev (or val) or test.")
        return _split_name(split)
    for word, ours in (("train", "train"), ("val", "dev"), ("test", "test")):
        if word in path.name.lower():
            return ours
    raise CaptionerError(f"Cannot tell the split of {path} from its name; expected train, val or test "
                         "in it (like captions_val2014.json) or an explicit split.")


def read_coco(path: str | Path, image_root: str | Path, split: str | None = None) -> Corpus:
    """A COCO captions file (captions_train2014.json, ...); the split comes from its name or `split`."""
    path = Path(path)
    expected = ('a COCO captions file like captions_train2014.json: {"images": [{"id", "file_name"}], '
                '"annotations": [{"image_id", "caption"}]}')
    data = _load_json(path, expected)
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise CaptionerError(f"{path} is not a COCO captions file; expected {expected}.")
    split = _coco_split(path, split)
    col = _Collector(Path(image_root))
    files: dict[int | str, str] = {}
    for number, entry in enumerate(data["images"]):
        e = entry if isinstance(entry, dict) else {}
        if isinstance(e.get("id"), (int, str)) and isinstance(e.get("file_name"), str):
            files[e["id"]] = e["file_name"]
        else:
            col.problems.add(MALFORMED, f"{path.name}: images[{number}]", "expected an id and a file_name")
    for number, ann in enumerate(data["annotations"]):
        a = ann if isinstance(ann, dict) else {}
        image_id, ann_id, caption = a.get("image_id"), a.get("id"), a.get("caption")
        known = isinstance(image_id, (int, str)) and image_id in files
        where = f"{path.name}: image {files[image_id]}" if known else f"{path.name}: annotations[{number}]"
        if not known or not isinstance(caption, str) or not (ann_id is None or isinstance(ann_id, (int, str))):
            col.problems.add(MALFORMED, where, "expected a caption and the image_id of an entry in images")
        elif ann_id is not None and col.repeated(ann_id):
            col.problems.add(DUPLICATE, where, f"annotation id {ann_id} appears twice")
        else:
            col.add(where, files[image_id], caption, split)
    return col.corpus


Sample = dict[str, str | bytes]  # "image": the photo's path relative to the image root; "txt", "json": file bytes


def _sample_key(name: str) -> tuple[str, str]:
    """A webdataset member or img2dataset file name split into its sample key and its extension.

    As in webdataset, the extension starts at the first dot of the base name:
    `00000/000000123.jpg` -> (`00000/000000123`, `jpg`).
    """
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _sample_caption(sample: Sample, name: str) -> tuple[str | None, str, str]:
    """The caption of one sample from its `txt` file, else its `json` file's "caption";
    without one, None with the kind of problem and why."""
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8-sig"), "", ""
        except UnicodeDecodeError:
            return None, UNDECODABLE, f"{name}.txt holds bytes that are not UTF-8"
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            return None, MALFORMED, f"{name}.json is not a JSON object"
        if isinstance(caption, str):
            return caption, "", ""
    return None, MALFORMED, f"{name} has no .txt and no caption in its .json"


def _add_file(samples: dict[str, Sample], name: str, read: Callable[[], bytes]) -> str | None:
    """File `name` of a sample into `samples`; returns the photo's name if it is the sample's photo."""
    key, ext = _sample_key(name)
    if f".{ext}" in PHOTO_SUFFIXES:
        samples.setdefault(key, {})["image"] = name
        return name
    if ext in ("txt", "json"):
        samples.setdefault(key, {})[ext] = read()
    return None


def _folder_samples(root: Path) -> dict[str, Sample]:
    """The samples of img2dataset's "files" output: shard folders of KEY.jpg, KEY.txt, KEY.json."""
    samples: dict[str, Sample] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / name
            _add_file(samples, path.relative_to(root).as_posix(), path.read_bytes)
    return samples


def _tar_samples(shard: Path, image_root: Path) -> dict[str, Sample]:
    """The samples of one webdataset `.tar` shard, its photos extracted into image_root/<shard name>/.

    A photo already there with the same size is not written again, so preparing twice is cheap.
    """
    samples: dict[str, Sample] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                name = f"{shard.stem}/{member.name.removeprefix('./')}"
                if not member.isfile() or ".." in name.split("/"):
                    continue
                data = tar.extractfile(member).read()
                if _add_file(samples, name, lambda: data):
                    target = image_root / name
                    if not (target.is_file() and target.stat().st_size == len(data)):
                        target.parent.mkdir(parents=True, exist_ok=True)
                        write_atomic(target, data)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        reason = str(e).splitlines()[0].rstrip(":")
        raise CaptionerError(f"{shard} is not a readable tar shard ({reason}); copy it again or leave it out.") from None
    return samples


def read_img2dataset(root: str | Path, image_root: str | Path | None = None) -> Corpus:
    """img2dataset / webdataset output: each photo KEY.jpg with its caption in KEY.txt (or KEY.json's "caption").

    `root` is a folder of shard folders (`00000/KEY.jpg`, as img2dataset's
    "files" output writes), a folder of `.tar` shards (its "webdataset"
    output), or one `.tar`. Photos inside tar shards are extracted into
    `image_root` (prepare's default: OUT/images); a folder that holds `.tar`
    shards is read from them alone. The split is hash_split of the sample's key,
    the same in either layout.
    """
    root = Path(root)
    expected = "an img2dataset folder of shard folders (00000/KEY.jpg with KEY.txt) or of .tar shards"
    if not root.exists():
        raise CaptionerError(f"{root} does not exist; expected {expected}.")
    tars = [root] if root.is_file() else sorted(root.glob("*.tar"))
    if tars and image_root is None:
        raise CaptionerError(f"{root} holds tar shards: name a folder to extract their photos into (--images).")
    image_root = Path(image_root) if tars else root
    image_root.mkdir(parents=True, exist_ok=True)
    col = _Collector(image_root)
    for samples in [_tar_samples(shard, image_root) for shard in tars] if tars else [_folder_samples(root)]:
        for key, sample in samples.items():
            where = f"{key}.txt" if "txt" in sample else f"{key}.json" if "json" in sample else key
            caption, kind, why = _sample_caption(sample, Path(key).name)
            if "image" not in sample:
                col.problems.add(MISSING_IMAGE, where, f"no photo for the caption of {key}")
            elif caption is None:
                col.problems.add(kind, where, why)
            else:
                col.add(where, sample["image"], caption, hash_split(key))
    if not col.corpus.records and not col.problems.total:
        raise CaptionerError(f"{root} holds no photos with captions; expected {expected}.")
    return col.corpus


def _read(kind: str, source: Path, image_root: str | Path | None, out: Path) -> Corpus:
    if kind == "flickr8k":
        return read_flickr8k(source, image_root)
    if kind == "img2dataset":
        return read_img2dataset(source, image_root or out / "images")
    readers = {"csv": read_captions_csv, "karpathy": read_karpathy, "coco": read_coco, "table": read_table}
    if kind not in readers:
        raise CaptionerError(f"Unknown corpus kind {kind!r}; expected one of {', '.join(KINDS)}.")
    return readers[kind](source, Path(image_root) if image_root else _default_image_root(source))


@dataclass
class PrepareReport:
    """What prepare found and wrote: sizes per split, the vocabulary, and what it skipped."""

    source: str
    out_dir: Path
    images: dict[str, int]
    captions: dict[str, int]
    vocab_size: int
    min_count: int
    max_len: int
    unknown_share: float
    too_long: int
    problems: Problems
    notes: list[str]

    def to_json(self) -> dict:
        return {"source": self.source, "images": self.images, "captions": self.captions,
                "vocab_size": self.vocab_size, "min_count": self.min_count, "max_len": self.max_len,
                "unknown_train_token_share": round(self.unknown_share, 6),
                "captions_longer_than_max_len": self.too_long, "notes": self.notes,
                "problems": self.problems.to_json()}

    def summary(self) -> str:
        """A few lines for a person: sizes, vocabulary, notes and what was skipped."""
        per_split = ", ".join(f"{s} {self.images[s]:,}" for s in SPLITS)
        lines = [f"{_plural(sum(self.images.values()), 'photo', 'photos')} ({per_split}), "
                 f"{_plural(sum(self.captions.values()), 'caption', 'captions')}, "
                 f"vocabulary {self.vocab_size:,} tokens (train words seen {self.min_count}+ times, "
                 "and 4 special tokens)",
                 f"{self.unknown_share:.2%} of train words are outside the vocabulary; "
                 f"{_plural(self.too_long, 'caption is', 'captions are')} longer than {self.max_len} words",
                 *(f"note: {note}" for note in self.notes),
                 *self.problems.lines()]
        if self.problems.total:
            lines.append(f"the first {EXAMPLES_PER_KIND} of each kind are listed in {self.out_dir / 'report.json'}")
        return "\n".join(lines)


def _group(records: Iterable[Record]) -> list[dict]:
    """One entry per image, sorted by name, captions in their original order."""
    by_image: dict[str, dict] = {}
    for r in records:
        entry = by_image.setdefault(r.image, {"image": r.image, "split": r.split, "captions": [], "raw": []})
        entry["captions"].append(" ".join(r.tokens))
        entry["raw"].append(r.raw)
    return [by_image[name] for name in sorted(by_image)]


def default_out(kind: str) -> Path:
    """Where `prepare` writes a corpus of `kind` unless told: data/KIND, so corpora of two kinds never collide."""
    return Path("data") / kind


def _check_replaceable(out: Path, kind: str, source: Path) -> None:
    """Refuse to overwrite a corpus prepared in `out` from another source (another kind, or another corpus path)."""
    if not (out / "captions.json").is_file():
        return
    keep = "give another --out, or add --force to replace it."
    try:
        before = json.loads((out / "captions.json").read_text(encoding="utf-8"))
        kind_before, corpus_before = str(before["source"]), before.get("corpus")
    except (OSError, ValueError, KeyError, TypeError):
        raise CaptionerError(f"{out} holds a prepared corpus that cannot be read; {keep}") from None
    if kind_before != kind or corpus_before not in (None, str(source.resolve())):
        where = f" from {corpus_before}" if corpus_before else ""
        raise CaptionerError(f"{out} already holds a {kind_before} corpus prepared{where}; {keep}")


def prepare(kind: str, source: str | Path, out_dir: str | Path | None = None, *,
            image_root: str | Path | None = None, min_count: int = 5, max_len: int = 30, strict: bool = False,
            force: bool = False) -> PrepareReport:
    """Read a corpus, clean its captions, build the vocabulary on train, and write them to `out_dir`.

    `kind` is one of KINDS. Flawed lines are skipped and reported; with
    `strict` any flaw stops the run before anything is written. Without
    `image_root` the photos are looked for in Images/ beside the source.
    `out_dir` defaults to data/KIND; a corpus prepared there from another
    source is only replaced with `force`.
    """
    if min_count < 1 or max_len < 1:
        raise CaptionerError(f"min_count and max_len must be at least 1, not {min_count} and {max_len}.")
    source, out = Path(source), Path(out_dir) if out_dir is not None else default_out(kind)
    if not force:
        _check_replaceable(out, kind, source)
    corpus = _read(kind, source, image_root, out)
    problems, first = corpus.problems, corpus.problems.first
    if strict and first:
        raise CaptionerError(f"Found {_plural(problems.total, 'problem', 'problems')} in {source}, the first at "
                             f"{first.where} ({first.detail}); run without --strict to skip them.")
    if not corpus.records:
        skipped = f" ({problems.total:,} skipped, the first at {first.where}: {first.detail})" if first else ""
        raise CaptionerError(f"{source} holds no usable captions{skipped}; check the corpus kind "
                             "and the image folder.")
    train = [r.tokens for r in corpus.records if r.split == "train"]
    if not train:  # e.g. a dev set kept apart from every training corpus
        corpus.notes.append("no training captions: the corpus can select and evaluate models, not train them")
    vocab = Vocab.build(train, min_count)
    images = _group(corpus.records)
    report = PrepareReport(
        source=kind, out_dir=out,
        images={s: sum(e["split"] == s for e in images) for s in SPLITS},
        captions={s: sum(r.split == s for r in corpus.records) for s in SPLITS},
        vocab_size=len(vocab), min_count=min_count, max_len=max_len,
        unknown_share=sum(w not in vocab.index for t in train for w in t) / max(1, sum(map(len, train))),
        too_long=sum(len(r.tokens) > max_len for r in corpus.records),
        problems=problems, notes=corpus.notes)
    captions = {"format": FORMAT, "source": kind, "corpus": str(source.resolve()),
                "image_root": str(corpus.image_root),
                "max_len": max_len, "min_count": min_count, "images": images}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaptionerError(f"Cannot create the output folder {out} ({e.strerror}).") from None
    # captions.json goes last and names the vocabulary it was made with: a run killed before it leaves
    # the previous captions.json, which `load_prepared` then finds paired with a vocabulary not its own.
    with atomic_path(out / "vocab.json") as tmp:
        vocab.save(tmp)
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    captions["vocab_sha256"] = file_sha256(out / "vocab.json")
    with atomic_path(out / "captions.json") as tmp:
        tmp.write_text(json.dumps(captions, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


@dataclass
class Prepared:
    """A prepared corpus as training and evaluation use it: images with split and captions, and the vocabulary."""

    image_root: Path
    max_len: int
    min_count: int  # the vocabulary holds the train words seen at least this often
    images: list[dict]
    vocab: Vocab


def load_prepared(out_dir: str | Path) -> Prepared:
    """Read back what `prepare` wrote to `out_dir`."""
    out = Path(out_dir)
    for name in ("captions.json", "vocab.json"):
        if not (out / name).is_file():
            raise CaptionerError(f"{out} holds no prepared corpus ({name} is missing); "
                                 "run `captioner prepare ...` first.")
    try:
        data = json.loads((out / "captions.json").read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise CaptionerError(f"{out / 'captions.json'} has format {data.get('format')!r} but this version reads "
                                 f"format {FORMAT}; run `captioner prepare ...` again.")
        if data.get("vocab_sha256", file_sha256(out / "vocab.json")) != file_sha256(out / "vocab.json"):
            raise CaptionerError(f"{out / 'vocab.json'} is not the vocabulary {out / 'captions.json'} was made "
                                 "with (an interrupted `captioner prepare`?); run `captioner prepare ...` again.")
        return Prepared(Path(data["image_root"]), int(data["max_len"]), int(data["min_count"]), data["images"],
                        Vocab.load(out / "vocab.json"))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CaptionerError(f"{out} holds a damaged prepared corpus ({e}); "
                             "run `captioner prepare ...` again.") from None
