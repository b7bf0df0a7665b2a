"""The Python API, and the one place captions are made from photos' features: `Captioner.load().caption([...])`."""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from .data.images import expand_paths
from .data.text import detokenize
from .features.cache import encode_photos
from .models import confidence, embedding
from .models.decode import decode
from .models.device import resolve
from .models.encoders import load_encoder
from .models.encoders.base import Encoder, with_tuned_top
from .models.folder import Model, load_model
from .models.search import Hypothesis
from .models.tags import Tag, tagger


@dataclass
class Caption:
    """One photo's caption, or the one-sentence reason it has none."""

    path: Path | None = None  # None: made from features, not from a photo file
    text: str = ""
    score: float = 0.0  # log-probability of the caption under the model
    words: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # the beam's other captions
    attention: np.ndarray | None = None  # [len(words) + 1, G, G]: where each word (and the end) looked
    vector: np.ndarray | None = None  # [D] float32: the encoder's pooled vector of the photo
    tags: list[Tag] = field(default_factory=list)  # what the encoder's classifier recognises, likeliest first
    confidence: float | None = None  # the chance the caption is right (None: the model is not calibrated)
    doubt: int = 0  # how it is said: 0 plainly, 1 "probably ...", 2 "I am not sure; it may be ..." (confidence.py)
    error: str = ""
    warning: str = ""
    embedding: np.ndarray | None = None  # [384] float32: the photo in the search space (models/embedding.py)

    @property
    def said(self) -> str:
        """The caption as a person should read or hear it: with its doubt in words."""
        return confidence.say(self.text, self.doubt)

    @property
    def beam_texts(self) -> list[str]:
        """The caption and the beam's other captions, best first (what the gallery embeds)."""
        return [self.text] + [text for text, _ in self.alternatives]

    def to_json(self, tags: bool = False) -> dict:
        if self.error:
            return {"path": str(self.path), "error": self.error}
        out = {"path": str(self.path), "caption": self.text, "score": round(self.score, 4)}
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 3)
        return out | {"tags": [t.to_json() for t in self.tags]} if tags else out

    def to_dict(self) -> dict:
        """Every field by name, JSON-ready (arrays as lists): a Caption passed between processes."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out |= {"path": None if self.path is None else str(self.path), "tags": [asdict(t) for t in self.tags]}
        return out | {k: out[k].tolist() for k in ("attention", "vector", "embedding") if out[k] is not None}

    @classmethod
    def from_dict(cls, d: dict) -> Caption:
        """The Caption `to_dict` gave."""
        arrays = {k: np.asarray(d[k], np.float32) for k in ("attention", "vector", "embedding") if d[k] is not None}
        return cls(**d | arrays | {"path": None if d["path"] is None else Path(d["path"]),
                                   "alternatives": [tuple(a) for a in d["alternatives"]],
                                   "tags": [Tag(**t) for t in d["tags"]]})


class Captioner:
    """A loaded model and its encoder: photos in, captions out. It runs on its encoder's device, where its
    decoder, tagger, confidence and embedding are too."""

    def __init__(self, model: Model, encoder: Encoder, search: bool = False):
        self.model = model
        self.encoder = encoder
        self.tagger = tagger(model, encoder)
        self.centroids, self.confidence = confidence.load(model.folder, self.device) if model.folder else (None, None)
        self.search = search  # also place each photo in the search space (Caption.embedding), as galleries need

    @classmethod
    def load(cls, model_dir: str | Path | None = None, search: bool = False,
             device: str | torch.device = "auto") -> Captioner:
        """The model in `model_dir`, or the default model shipped with captioner (`search`: see Captioner.search),
        on `device` (auto, cpu, cuda or mps: see models.device.resolve). A model with a fine-tuned encoder top
        gets its encoder with that top beside the encoder's own (see encoders.base.with_tuned_top)."""
        device = resolve(device)
        model = load_model(model_dir, fast=True, device=device)
        encoder = load_encoder(model.encoder, model.input_size, device, model.top_blocks)
        return cls(model, encoder if model.top is None else with_tuned_top(encoder, model.top), search)

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @functools.cached_property
    def embedding(self) -> embedding.Embedding | None:
        """The model's photo-text embedding (gallery search), loaded when first asked for; None if it has none."""
        return embedding.load(self.model.folder, self.device)

    def caption(self, photos: Iterable[str | Path], beam: int | None = None, batch_size: int = 16,
                progress: bool = False) -> list[Caption]:
        """Captions of the photos (folders expand to the photos inside), in order."""
        return list(self.stream(photos, beam, batch_size, progress))

    def stream(self, photos: Iterable[str | Path], beam: int | None = None, batch_size: int = 16,
               progress: bool = False) -> Iterator[Caption]:
        """Like `caption`, yielding each caption as soon as its batch is done."""
        paths = expand_paths(photos)
        for ok, pooled, grid, errors, warned, tuned in encode_photos(self.encoder, paths, batch_size, progress):
            results = {i: Caption(paths[i], error=msg) for i, msg in errors.items()}
            for i, c in zip(ok, self.describe(pooled, grid, beam=beam, tuned=tuned) if ok else []):
                results[i] = replace(c, path=paths[i], warning=warned.get(i, ""))
            yield from (results[i] for i in sorted(results))

    def describe(self, pooled: torch.Tensor, grid: torch.Tensor,
                 tuned: tuple[torch.Tensor, torch.Tensor] | None = None, beam: int | None = None) -> list[Caption]:
        """Captions of photos given by their encoder features, pooled [B, C] and grid [B, N, C], decoded with the
        model's settings (`beam` in place of its width): what every caption of this model comes from.
        A model with a fine-tuned encoder top decodes `tuned`, that top's (pooled, grid), and its tags, confidence
        and vector read the encoder's own (its search embedding reads what its config says):
        `describe(*captioner.encoder(pixels))` gives both.
        The features may be on any device: they move to the captioner's."""
        pooled, grid = pooled.to(self.device), grid.to(self.device)
        settings = self.model.decode.override(beam=beam)
        decoded = [t.to(self.device) for t in tuned] if tuned is not None else (pooled, grid)
        beams, probs = decode(self.model.decoder, *decoded, settings, self.tagger, tagged=pooled)
        n = len(beams)
        tags = self.tagger.tags(probs) if self.tagger else [[] for _ in range(n)]
        sure = self.confidence(confidence.features(beams, pooled, self.centroids, probs, self.tagger.word_ids
                                                   if self.tagger else None)).tolist() \
            if self.confidence else [None] * n
        images = self.embedding.images(*(decoded if self.embedding.cfg.tuned else (pooled, grid))) \
            if self.search and self.embedding else [None] * n
        return [self._caption(hyps, vector, photo_tags, c, image) for hyps, vector, photo_tags, c, image
                in zip(beams, pooled.float().cpu().numpy(), tags, sure, images)]

    def _caption(self, beams: list[Hypothesis], vector: np.ndarray, tags: list[Tag], sure: float | None,
                 image: np.ndarray | None) -> Caption:
        words = [[self.model.vocab.words[t] for t in h.tokens] for h in beams]
        best = beams[0]
        side = self.encoder.spec.grid
        attention = best.attention.reshape(-1, side, side).numpy() if best.attention is not None else None
        return Caption(None, detokenize(words[0]), best.logprob, words[0],
                       [(detokenize(w), h.logprob) for w, h in zip(words[1:], beams[1:])], attention, vector, tags,
                       sure, self.confidence.doubt(sure) if sure is not None else 0, embedding=image)
