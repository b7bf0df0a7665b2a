"""Caption text: cleaning, tokens and the vocabulary (stored as JSON)."""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = range(4)

_NON_WORD = re.compile(r"[^a-z0-9' ]+")
_POSSESSIVE = re.compile(r"\s*'s\b")


def clean(caption: str) -> list[str]:
    """Lower-cased word tokens of a caption, punctuation stripped.

    Keeps every word BLEU counts, short ones like "a" included. The possessive
    is its own token, as in the corpora and the PTB tokenizer ("dog's" and
    "dog 's" both give "dog", "'s"); other apostrophes go ("don't" -> "dont").
    Accents fold to ASCII so "café" and "cafe" are one word.
    """
    text = unicodedata.normalize("NFKD", caption).encode("ascii", "ignore").decode()
    text = _NON_WORD.sub(" ", text.lower().replace("-", " "))
    text = _POSSESSIVE.sub(" \x00s", text).replace("'", "").replace("\x00", "'")
    return text.split()


def detokenize(tokens: Iterable[str]) -> str:
    """A sentence a person reads: possessives joined back ("dog 's" -> "dog's")."""
    return " ".join(tokens).replace(" 's", "'s")


@dataclass
class Vocab:
    """Index <-> word, with the four special tokens first."""

    words: list[str]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.words[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {', '.join(SPECIALS)}")
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions: Iterable[list[str]], min_count: int = 5) -> "Vocab":
        """Words seen at least `min_count` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for tokens in captions for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: list[str], max_len: int) -> list[int]:
        """`<start> w1 .. wn <end>` as ids, with at most `max_len` words."""
        ids = [self.index.get(w, UNK_ID) for w in tokens[:max_len]]
        return [START_ID, *ids, END_ID]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of `ids` up to the first `<end>`, specials left out."""
        words = []
        for i in ids:
            if i == END_ID:
                break
            if i >= len(SPECIALS):
                words.append(self.words[i])
        return " ".join(words)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls(json.loads(Path(path).read_text())["words"])
