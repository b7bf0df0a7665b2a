"""The Python API: `Captioner.load().caption(["photo.jpg"])`."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.features import encode_photos
from .data.images import expand_paths
from .data.text import detokenize
from .models import confidence, embedding
from .models.decode import beam_search
from .models.encoders import Encoder, load_encoder
from .models.folder import Model, load_model
from .models.tags import Tag, tagger


@dataclass
class Caption:
    """One photo's caption, or the one-sentence reason it has none."""

    path: Path
    text: str = ""
    score: float = 0.0  # log-probability of the caption under the model
    words: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the beam's other captions
    attention: np.ndarray | None = None  # [len(words) + 1, G, G]: where each word (and the end) looked
    vector: np.ndarray | None = None  # [D] float32: the encoder's pooled vector of the photo
    tags: list[Tag] = field(default_factory=list)  # what the encoder's classifier recognises, likeliest first
    confidence: float | None = None  # the chance the caption is right (None: the model is not calibrated)
    error: str = ""
    warning: str = ""
    embedding: np.ndarray | None = None  # [384] float32: the photo in the search space (retrieval.py), if trained

    @property
    def said(self) -> str:
        """The caption as a person should read or hear it: with doubt in words when its confidence is low."""
        return confidence.say(self.text, self.confidence)

    def to_json(self, tags: bool = False) -> dict:
        if self.error:
            return {"path": str(self.path), "error": self.error}
        out = {"path": str(self.path), "caption": self.text, "score": round(self.score, 4)}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 3)
        return out | {"tags": [t.to_json() for t in self.tags]} if tags else out


class Captioner:
    """A loaded model and its encoder: photos in, captions out."""

    def __init__(self, model: Model, encoder: Encoder):
        self.model = model
        self.encoder = encoder
        self.tagger = tagger(model, encoder)
        self.centroids, self.confidence = confidence.load(model.folder) if model.folder else (None, None)
        self.embedding = embedding.load(model.folder)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> "Captioner":
        """The model in `model_dir`, or the default model shipped with captioner."""
        model = load_model(model_dir, fast=True)
        return cls(model, load_encoder(model.encoder, model.input_size))

    def caption(self, photos: Iterable[str | Path], beam: int | None = None, batch_size: int = 16,
                progress: bool = False) -> list[Caption]:
        """Captions of the photos (folders expand to the photos inside), in order."""
        return list(self.stream(photos, beam, batch_size, progress))

    def stream(self, photos: Iterable[str | Path], beam: int | None = None, batch_size: int = 16,
               progress: bool = False) -> Iterator[Caption]:
        """Like `caption`, yielding each caption as soon as its batch is done."""
        paths = expand_paths(photos)
        cfg = self.model.decode
        beam = beam or cfg.beam
        grid_side = self.encoder.spec.grid
        for ok, pooled, grid, errors, warned in encode_photos(self.encoder, paths, batch_size, progress):
            results = {i: Caption(paths[i], error=msg) for i, msg in errors.items()}
            if ok:
                probs = self.tagger.probabilities(pooled) if self.tagger else None
                guide = self.tagger.guide(probs, cfg.tag_weight) if self.tagger and cfg.tag_weight else None
                hyps = beam_search(self.model.decoder, pooled, grid, beam, cfg.max_len,
                                   cfg.length_penalty, cfg.block_ngram, guide)
                tags = self.tagger.tags(probs) if self.tagger else [[] for _ in ok]
                sure = self.confidence(confidence.features(hyps, pooled, self.centroids, probs, self.tagger.word_ids
                                                           if self.tagger else None)).tolist() \
                    if self.confidence else [None] * len(ok)
                images = self.embedding.images(pooled, grid) if self.embedding else [None] * len(ok)
                for i, beams, vector, photo_tags, c, image in zip(ok, hyps, pooled.float().numpy(), tags, sure,
                                                                  images):
                    results[i] = self._caption(paths[i], beams, grid_side, vector, photo_tags, c)
                    results[i].warning = warned.get(i, "")
                    results[i].embedding = image
            yield from (results[i] for i in sorted(results))

    def _caption(self, path: Path, beams, grid_side: int, vector: np.ndarray, tags: list[Tag],
                 sure: float | None) -> Caption:
        words_of = [[self.model.vocab.words[t] for t in h.tokens] for h in beams]
        best = beams[0]
        attention = None
        if best.attention is not None:
            attention = best.attention.reshape(-1, grid_side, grid_side).numpy()
        return Caption(path, detokenize(words_of[0]), best.logprob, words_of[0],
                       [(detokenize(w), h.logprob) for w, h in zip(words_of[1:], beams[1:])], attention, vector, tags,
                       sure)

