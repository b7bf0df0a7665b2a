"""Caption corpora: many file formats in, one prepared form out.

Every reader turns its format into the same records (image, split, original
caption, clean tokens) and counts what it had to skip, so one flawed line costs
one caption, never the whole run. `prepare` writes the result as captions.json,
vocab.json and report.json; `load_prepared` reads it back for training and
evaluation.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CaptionerError
from ..files import atomic_path
from .images import file_sha256
from .readers import read
from .readers.common import EXAMPLES_PER_KIND, SPLITS, Problems, Record, plural
from .text import Vocab

FORMAT = 1

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
        lines = [f"{plural(sum(self.images.values()), 'photo', 'photos')} ({per_split}), "
                 f"{plural(sum(self.captions.values()), 'caption', 'captions')}, "
                 f"vocabulary {self.vocab_size:,} tokens (train words seen {self.min_count}+ times, "
                 "and 4 special tokens)",
                 f"{self.unknown_share:.2%} of train words are outside the vocabulary; "
                 f"{plural(self.too_long, 'caption is', 'captions are')} longer than {self.max_len} words",
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

    `kind` is the name of a reader (readers.READERS). Flawed lines are skipped and reported; with
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
    corpus = read(kind, source, image_root, out)
    problems, first = corpus.problems, corpus.problems.first
    if strict and first:
        raise CaptionerError(f"Found {plural(problems.total, 'problem', 'problems')} in {source}, the first at "
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
