"""A prepared corpus joined with its cached features, ready for training and evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .corpus import Prepared
from .encoders import load_encoder
from .errors import CaptionerError
from .features import FeatureCache, build_cache
from .text import PAD_ID, Vocab


@dataclass
class Split:
    """The photos of one split with their features and captions."""

    paths: list[Path]
    pooled: torch.Tensor  # [n, D] float16
    grid: torch.Tensor  # [n, N, D] float16
    references: list[list[str]]  # cleaned captions per photo (tokens joined by spaces)
    raw: list[list[str]]  # the captions as written, for the COCO toolkit's tokenizer

    def captions(self, vocab: Vocab, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every caption as ids [m, L] (`<start> .. <end>`, padded) and the photo each belongs to [m]."""
        encoded, owner = [], []
        for i, refs in enumerate(self.references):
            for ref in refs:
                encoded.append(vocab.encode(ref.split(), max_len))
                owner.append(i)
        ids = torch.full((len(encoded), max(map(len, encoded))), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(encoded):
            ids[row, :len(seq)] = torch.tensor(seq)
        return ids, torch.tensor(owner)


def ensure_features(prepared: Prepared, encoder: str, input_size: int, cache_root: str | Path,
                    splits: tuple[str, ...], progress: bool = True) -> tuple[FeatureCache, dict[str, str]]:
    """Encode the corpus photos of `splits` not cached yet; returns the cache and each photo's hash."""
    images = [im for im in prepared.images if im["split"] in splits]
    paths = [prepared.image_root / im["image"] for im in images]
    cache, hashes, failed = build_cache(load_encoder(encoder, input_size), paths, cache_root, progress=progress)
    if failed:
        reason = next(iter(failed.values()))
        raise CaptionerError(f"{len(failed)} corpus photos could not be encoded, the first: {reason}; "
                             "fix or remove them and run `captioner prepare` again")
    return cache, {im["image"]: h for im, h in zip(images, hashes)}


def load_split(prepared: Prepared, cache: FeatureCache, hashes: dict[str, str], split: str) -> Split:
    images = [im for im in prepared.images if im["split"] == split]
    if not images:
        raise CaptionerError(f"the prepared corpus has no photos in the {split} split")
    pooled, grid = cache.load([hashes[im["image"]] for im in images])
    return Split([prepared.image_root / im["image"] for im in images], pooled, grid,
                 [im["captions"] for im in images], [im["raw"] for im in images])
