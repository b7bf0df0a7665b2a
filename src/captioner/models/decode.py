"""Decoding settings and the one path from features to captions' word ids.

Every caption captioner writes (the API and CLI, evaluation, training's dev
scoring and self-critical baseline, calibration, search tuning, the Ray actors,
the gallery and the web app) comes from `decode`, with settings resolved by
`DecodeConfig.override`: a model decodes the same way wherever it is used.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from tqdm import tqdm

from .decoders import Decoder
from .search import Hypothesis, beam_search, greedy
from .tags import Tagger


@dataclass
class DecodeConfig:
    beam: int = 3
    length_penalty: float = 0.0
    max_len: int = 30
    block_ngram: int = 0  # n > 0: no caption repeats an n-gram of its own
    tag_weight: float = 0.0  # guided decoding: the word of a tag with probability p gains tag_weight x p

    def override(self, **given: float | int | None) -> DecodeConfig:
        """These settings with each of `given` that is not None in its place (a caller's flags over a model's)."""
        known = {f.name for f in fields(self)}
        unknown = set(given) - known
        if unknown:
            raise TypeError(f"unknown decoding setting {sorted(unknown)[0]!r}")
        return replace(self, **{k: v for k, v in given.items() if v is not None})


GREEDY = DecodeConfig(beam=1)
"""Training's dev scoring and self-critical baseline: the likeliest word at every step, unguided."""


def decode(decoder: Decoder, pooled: torch.Tensor, grid: torch.Tensor, settings: DecodeConfig,
           tagger: Tagger | None = None, batch_size: int = 100, progress: bool = False,
           tagged: torch.Tensor | None = None) -> tuple[list[list[Hypothesis]], torch.Tensor | None]:
    """Each photo's captions, best first, and its class probabilities [n, C] (None without a `tagger`).

    pooled [n, C] and grid [n, N, C] are the features the decoder reads. With a tagger
    and `settings.tag_weight`, the search is guided toward the words of the
    photo's likely classes, which the tagger finds in `tagged` [n, C] (default:
    pooled; the encoder's own where the decoder reads a fine-tuned top). One beam,
    unguided and unblocked, is greedy search (the same captions, cheaper).
    """
    tagged = pooled if tagged is None else tagged
    beams, probs = [], []
    for start in tqdm(range(0, len(pooled), batch_size), desc="captioning", unit="batch", disable=not progress):
        p, g = pooled[start:start + batch_size], grid[start:start + batch_size]
        classes = tagger.probabilities(tagged[start:start + batch_size]) if tagger else None
        guide = tagger.guide(classes, settings.tag_weight) if tagger and settings.tag_weight else None
        if settings.beam == 1 and guide is None and not settings.block_ngram:
            beams += [[h] for h in greedy(decoder, p, g, settings.max_len)]
        else:
            beams += beam_search(decoder, p, g, settings.beam, settings.max_len, settings.length_penalty,
                                 settings.block_ngram, guide)
        probs.append(classes)
    return beams, torch.cat(probs) if tagger and probs else None
