"""Flickr8k as distributed: Flickr8k.token.txt, the split files and Images/."""
from __future__ import annotations

from pathlib import Path

from ...errors import CaptionerError
from . import register
from .common import DUPLICATE, MALFORMED, SPLIT_CONFLICT, Collector, Corpus, lines, plural, read_bytes

FLICKR8K_TOKENS = "Flickr8k.token.txt"

FLICKR8K_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                        "test": "Flickr_8k.testImages.txt"}

# Problem kinds, with the words a summary uses for one and for many.


@register("flickr8k", "a folder with Flickr8k.token.txt, the split files and Images/",
          photos=lambda source, out: source / "Images")
def read_flickr8k(root: str | Path, image_root: str | Path | None = None) -> Corpus:
    """Flickr8k as distributed: Flickr8k.token.txt, the three split files and Images/ (or `image_root`).

    Photos in no split file are left out and counted in a note.
    """
    root = Path(root)
    expected = (f"a Flickr8k folder holding {FLICKR8K_TOKENS}, the three Flickr_8k.*Images.txt "
                "split files and Images/")
    if not root.is_dir():
        raise CaptionerError(f"{root} is not a folder; expected {expected}.")
    texts = {name: read_bytes(root / name, expected) for name in (FLICKR8K_TOKENS, *FLICKR8K_SPLIT_FILES.values())}
    col = Collector(Path(image_root) if image_root else root / "Images")
    split_of: dict[str, str] = {}
    for split, name in FLICKR8K_SPLIT_FILES.items():
        for number, line in lines(name, texts[name], col.problems):
            image = line.strip()
            if split_of.setdefault(image, split) != split:
                col.problems.add(SPLIT_CONFLICT, f"{name}:{number}",
                                 f"{image} is already in the {split_of[image]} split")
    for number, line in lines(FLICKR8K_TOKENS, texts[FLICKR8K_TOKENS], col.problems):
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
        col.corpus.notes.append(f"{plural(len(col.left_out), 'photo', 'photos')} with captions "
                                "in no split file left out")
    return col.corpus
