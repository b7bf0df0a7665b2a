"""Tags: what the encoder's ImageNet classifier recognises in a photo, and the caption word that names it.

EfficientNet-Lite's classifier head learned 1,000 ImageNet classes from 1.2
million photos: far more kinds of things than the caption corpora show. A tag
is a class the classifier finds likely, with its probability and the caption
word for it. A class's word is learned from the training corpora, as the word
its photos' captions use far more often than other captions do (`tabby` ->
`cat`, `golden retriever` -> `dog`); a class too rare there for that takes the
last word of the first of its WordNet names that the vocabulary holds (`bald
eagle` -> `eagle`); some classes have no word.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.text import Vocab, clean

CLASSES_FILE = Path(__file__).parents[1] / "assets" / "imagenet_classes.json"
"""The 1,000 ImageNet classes in the classifier's order: WordNet id and names, e.g. "Egyptian cat"."""

TOP, MIN_P = 5, 0.05  # a photo's tags: at most TOP classes, each with at least MIN_P probability
PRIOR = 10.0  # photos' worth of the corpus-wide word frequency mixed into each class's (smoothing)
MIN_SHARE = 0.15  # a learned word appears in at least this share of the class's captions...
MIN_LIFT = 4.0  # ...and at least this many times more often than in the captions of all photos


@dataclass
class Tag:
    label: str  # the class's first name, e.g. "Egyptian cat"
    p: float  # the classifier's probability
    word: str  # the caption word that names it ("cat"), or "" when there is none

    def to_json(self) -> dict:
        return {"label": self.label, "p": round(self.p, 4), "word": self.word}


def tag_words(tag: dict) -> set[str]:
    """The words a tag (as stored: {"label", "p", "word"}) answers to: its caption word, else the words of its
    class name ("bald eagle")."""
    from ..data.text import clean

    return {tag["word"]} if tag["word"] else set(clean(tag["label"]))


def tag_bonus(query: set[str], tags: list[dict], weight: float) -> float:
    """What a photo's tags add to its search score for a query of these words: weight x the probability of
    each tag the query names."""
    return weight * sum(t["p"] for t in tags if tag_words(t) & query)


@functools.cache
def class_names() -> list[list[str]]:
    """Each class's WordNet names, the first being the one a tag shows."""
    return [c["names"] for c in json.loads(CLASSES_FILE.read_text())]


def probabilities(classifier: torch.nn.Linear, pooled: torch.Tensor) -> torch.Tensor:
    """The classifier's class probabilities [B, C] from the encoder's pooled vectors [B, D] (on any device: they
    move to the classifier's)."""
    with torch.inference_mode():
        return classifier(pooled.to(classifier.weight.device).float()).softmax(-1)


class Tagger:
    """An encoder's classifier and the caption word of each class: a photo's tags, and the guide they give
    beam search (see decode.Guide)."""

    def __init__(self, classifier: torch.nn.Linear, words: list[str] | None, vocab: Vocab):
        self.classifier = classifier
        self.words = words or [""] * classifier.out_features
        self.word_ids = torch.tensor([vocab.index.get(w, -1) if w else -1 for w in self.words],
                                     device=classifier.weight.device)  # [C]

    def probabilities(self, pooled: torch.Tensor) -> torch.Tensor:
        return probabilities(self.classifier, pooled)

    def tags(self, probs: torch.Tensor, k: int = TOP, min_p: float = MIN_P) -> list[list[Tag]]:
        """Each photo's k most likely classes with at least min_p probability, most likely first."""
        names = class_names()
        values, indices = probs.topk(k, -1)
        return [[Tag(names[c][0], p, self.words[c]) for p, c in zip(vs.tolist(), cs.tolist()) if p >= min_p]
                for vs, cs in zip(values, indices)]

    def guide(self, probs: torch.Tensor, weight: float, k: int = TOP) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search's guide: each of the k likeliest classes' word gains weight x the class's probability."""
        values, indices = probs.topk(k, -1)
        return weight * values, self.word_ids[indices]


def name_word(names: list[str], vocab: Vocab) -> str:
    """The last word of the first name whose last word the vocabulary holds ("bald eagle" -> "eagle"), or ""."""
    for name in names:
        tokens = clean(name)
        if tokens and tokens[-1] in vocab.index:
            return tokens[-1]
    return ""


def class_words(probs: torch.Tensor, references: list[list[str]], vocab: Vocab) -> list[str]:
    """The caption word of each class, learned from training photos' class probabilities [N, C] and captions.

    For class c, the share of its captions holding word w is the
    probability-weighted share over all photos, smoothed toward the corpus-wide
    share by PRIOR photos; the word with the highest share x log(lift) wins if
    it clears MIN_SHARE and MIN_LIFT, else the class's name gives the word.
    """
    rows, cols, values = [], [], []
    for photo, refs in enumerate(references):  # how many of each photo's captions hold each word
        held: dict[int, int] = {}
        for ref in refs:
            for word in set(ref.split()):
                if word in vocab.index:
                    held[vocab.index[word]] = held.get(vocab.index[word], 0) + 1
        rows += [photo] * len(held)
        cols += list(held)
        values += [n / len(refs) for n in held.values()]
    where = probs.device
    share_of = torch.sparse_coo_tensor(torch.tensor([rows, cols], device=where),
                                       torch.tensor(values, dtype=torch.float32, device=where),
                                       (len(references), len(vocab)), check_invariants=True, device=where)  # [N, V]
    overall = share_of.sum(0).to_dense() / len(references)  # [V]
    mass = probs.sum(0)  # [C]: photos' worth of each class
    joint = torch.sparse.mm(share_of.t(), probs.float()).t()  # [C, V]
    share = (joint + PRIOR * overall) / (mass[:, None] + PRIOR)
    lift = share / overall.clamp(min=1e-9)
    score = torch.where(overall > 0, share * lift.clamp(min=1e-9).log(), -math.inf)
    best = score.argmax(1)
    chosen = share.gather(1, best[:, None]).squeeze(1), lift.gather(1, best[:, None]).squeeze(1)
    return [vocab.words[w] if s >= MIN_SHARE and l >= MIN_LIFT else name_word(names, vocab)
            for w, s, l, names in zip(best.tolist(), chosen[0].tolist(), chosen[1].tolist(), class_names())]


def tagger(model, encoder) -> Tagger | None:
    """The tagger of a loaded model (models.folder.Model) and its encoder; None if the encoder has no classifier."""
    return Tagger(encoder.classifier, model.class_words, model.vocab) if encoder.classifier is not None else None
