"""Captions in tables: the Kaggle captions.txt (csv), and a plain CSV or JSONL of image, caption[, split] (table)."""
from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path

from ...errors import CaptionerError
from . import register
from .common import MALFORMED, Collector, Corpus, add_row, lines, read_bytes


def _read_csv(path: Path, data: bytes, col: Collector, expected: str) -> None:
    """Rows of a CSV file whose header names image, caption and optionally split (other columns ignored)."""
    header: list[str] | None = None
    for number, line in lines(path.name, data, col.problems):
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
            add_row(col, where, row["image"], row["caption"], row.get("split"))
    if header is None:
        raise CaptionerError(f"{path} is empty; expected {expected}.")


@register("csv", "a captions.txt with image,caption (Kaggle's Flickr8k or Flickr30k)")
def read_captions_csv(path: str | Path, image_root: str | Path) -> Corpus:
    """The Kaggle Flickr8k/Flickr30k captions.txt (CSV, header `image,caption`); splits by hash_split."""
    path = Path(path)
    expected = "a Kaggle captions.txt: CSV with the header image,caption"
    data = read_bytes(path, expected)
    col = Collector(Path(image_root))
    _read_csv(path, data, col, expected)
    return col.corpus


@register("table", "a CSV or JSONL of image, caption[, split]")
def read_table(path: str | Path, image_root: str | Path) -> Corpus:
    """A plain CSV (header image, caption, optional split) or JSONL (objects with those keys).

    Rows without a split get hash_split. JSONL is recognised by its first
    character being "{".
    """
    path = Path(path)
    expected = "a CSV file with a header naming image, caption and optionally split, or JSONL with those keys"
    data = read_bytes(path, expected)
    col = Collector(Path(image_root))
    if not data.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{"):
        _read_csv(path, data, col, expected)
        return col.corpus
    for number, line in lines(path.name, data, col.problems):
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
            add_row(col, where, row["image"], row["caption"], row.get("split"))
    return col.corpus
