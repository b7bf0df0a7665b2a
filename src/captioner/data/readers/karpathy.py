"""Andrej Karpathy's dataset_*.json splits of Flickr8k, Flickr30k and COCO."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from ...errors import CaptionerError
from . import register
from .common import DUPLICATE, MALFORMED, Collector, Corpus, load_json, split_name


@register("karpathy", "a dataset_*.json of Karpathy's splits")
def read_karpathy(path: str | Path, image_root: str | Path) -> Corpus:
    """Karpathy's split files (dataset_flickr8k.json, dataset_coco.json, ...); val -> dev, restval -> train."""
    path = Path(path)
    expected = ('a Karpathy split file like dataset_flickr8k.json: {"images": [{"filename", "split", '
                '"sentences": [{"raw"}]}]}')
    data = load_json(path, expected)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not any(isinstance(e, dict) and "sentences" in e for e in entries):
        raise CaptionerError(f"{path} is not a Karpathy split file; expected {expected}.")
    col = Collector(Path(image_root))
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
                col.add(where, image, raw, split_name(split))
    return col.corpus
