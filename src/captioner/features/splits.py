"""Prepared corpora joined with their cached features, ready for training and evaluation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.corpus import Prepared, load_prepared
from ..data.text import PAD_ID, Vocab
from ..errors import CaptionerError
from ..models.encoders import load_encoder
from ..models.encoders.base import with_tuned_top
from ..models.folder import Model
from ..settings import section
from .cache import FeatureCache, build_cache


@dataclass
class CorpusConfig:
    prepared: str  # a folder written by `captioner prepare`
    share: float = 1.0  # its share of each epoch's training captions, relative to the other corpora's


@dataclass
class DataConfig:
    prepared: str = ""  # one corpus (a folder written by `captioner prepare`); or several in [[data.corpora]]
    corpora: list[CorpusConfig] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)  # prepared corpora whose dev splits choose the epoch by their
    # mean CIDEr (e.g. one kept apart from training, like coco-val-mini); empty: the training corpora's
    encoder: str = "efficientnet-lite2"
    input_size: int = 224
    cache: str = ""  # one feature cache folder for every corpus; empty: each corpus's <prepared>/features

    def __post_init__(self) -> None:
        if self.prepared and self.corpora:
            raise CaptionerError("[data]: give one corpus in prepared or several in [[data.corpora]], not both")
        self.corpora = [c if isinstance(c, CorpusConfig) else section(CorpusConfig, c, "[[data.corpora]]")
                        for c in self.corpora] or [CorpusConfig(self.prepared or "data/flickr8k")]
        self.prepared = ""
        if any(c.share < 0 for c in self.corpora) or not any(c.share > 0 for c in self.corpora):
            raise CaptionerError("[[data.corpora]]: shares must not be negative, and at least one must be above 0")
        self.dev = self.dev or [c.prepared for c in self.corpora if c.share > 0]


@dataclass
class Split:
    """The photos of one split with their features and captions."""

    paths: list[Path]
    pooled: torch.Tensor  # [n, D] float16
    grid: torch.Tensor  # [n, N, D] float16
    references: list[list[str]]  # cleaned captions per photo (tokens joined by spaces)
    raw: list[list[str]]  # the captions as written, for the COCO toolkit's tokenizer
    tuned: tuple[torch.Tensor, torch.Tensor] | None = None  # a model's fine-tuned top's pooled and grid (float16)

    @property
    def decoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (pooled, grid) a model's decoder reads: its fine-tuned top's, or the encoder's own."""
        return self.tuned if self.tuned is not None else (self.pooled, self.grid)

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
                    splits: tuple[str, ...], progress: bool = True, encode: Callable | None = None,
                    device: str | torch.device = "auto", top: int = 0) -> tuple[FeatureCache, dict[str, str]]:
    """Encode the corpus photos of `splits` not cached yet, on `device`; returns the cache and each photo's hash.

    `encode`: how photos are encoded (see `build_cache`; default: here, one batch after another).
    `top`: the features are the map below the encoder's last `top` blocks (see load_encoder)."""
    images = [im for im in prepared.images if im["split"] in splits]
    paths = [prepared.image_root / im["image"] for im in images]
    cache, hashes, failed = build_cache(load_encoder(encoder, input_size, device, top), paths, cache_root,
                                        progress=progress, encode=encode)
    if failed:
        reason = next(iter(failed.values()))
        raise CaptionerError(f"{len(failed)} corpus photos could not be encoded, the first: {reason}; "
                             "fix or remove them and run `captioner prepare` again")
    return cache, {im["image"]: h for im, h in zip(images, hashes)}


def load_split(prepared: Prepared, cache: FeatureCache, hashes: dict[str, str], split: str,
               grid_of=None) -> Split:
    """The photos of `split` with their features (with `grid_of`, grids only where it is true; see
    FeatureCache.load)."""
    images = [im for im in prepared.images if im["split"] == split]
    if not images:
        raise CaptionerError(f"the prepared corpus has no photos in the {split} split")
    pooled, grid = cache.load([hashes[im["image"]] for im in images], grid_of)
    return Split([prepared.image_root / im["image"] for im in images], pooled, grid,
                 [im["captions"] for im in images], [im["raw"] for im in images])


def concat(splits: list[Split]) -> Split:
    """One split holding the photos of `splits`, one after another."""
    return Split([p for s in splits for p in s.paths], torch.cat([s.pooled for s in splits]),
                 torch.cat([s.grid for s in splits]), [r for s in splits for r in s.references],
                 [r for s in splits for r in s.raw])


@dataclass
class TrainingData:
    """What a training run reads: the train photos of every corpus, the dev sets that choose the epoch, the
    vocabulary."""

    train: Split  # the train splits of the corpora with a share, one after another
    source: torch.Tensor  # [n] the corpus (index into shares) each training photo comes from
    shares: list[float]
    dev: dict[str, Split]  # dev set name -> its photos
    vocab: Vocab
    max_len: int


def encoded(folder: str | Path, encoder: str, input_size: int, splits: tuple[str, ...],
            cache: str | Path | None = None, progress: bool = True, device: str | torch.device = "auto",
            top: int = 0) -> tuple[Prepared, FeatureCache, dict[str, str]]:
    """The prepared corpus in `folder`, its feature cache with every photo of `splits` encoded (on `device`; with
    `top`, the map below the encoder's top), and their hashes."""
    prepared = load_prepared(folder)
    features, hashes = ensure_features(prepared, encoder, input_size, cache or Path(folder) / "features", splits,
                                       progress, device=device, top=top)
    return prepared, features, hashes


def load_features(folder: str | Path, encoder: str, input_size: int, split: str, cache: str | Path | None = None,
                  progress: bool = True, device: str | torch.device = "auto", top: int = 0) -> Split:
    """The photos of one split of the prepared corpus in `folder` with their features (encoded on `device` if not
    cached; loaded to the host; with `top`, the map below the encoder's last `top` blocks)."""
    return load_split(*encoded(folder, encoder, input_size, (split,), cache, progress, device, top), split)


def model_features(model: Model, folder: str | Path, split: str, cache: str | Path | None = None,
                   progress: bool = True, device: str | torch.device = "auto", batch_size: int = 256) -> Split:
    """The photos of one split with the features `model` reads: its encoder's own and, where the model has a
    fine-tuned top, that top's beside them (Split.tuned), both computed on `device` from the cached map below
    the tops (loaded to the host)."""
    if model.top is None:
        return load_features(folder, model.encoder, model.input_size, split, cache, progress, device)
    below = load_features(folder, model.encoder, model.input_size, split, cache, progress, device,
                          model.top_blocks)
    encoder = with_tuned_top(load_encoder(model.encoder, model.input_size, device, model.top_blocks), model.top)
    parts = [encoder.above(below.grid[i:i + batch_size]) for i in range(0, len(below.paths), batch_size)]

    def host(tensors: list[torch.Tensor]) -> torch.Tensor:  # float16 on the host, as cached features are
        return torch.cat(tensors).half().cpu()

    return replace(below, pooled=host([p.pooled for p in parts]), grid=host([p.grid for p in parts]),
                   tuned=(host([p.tuned[0] for p in parts]), host([p.tuned[1] for p in parts])))


def cache_training_features(data: DataConfig, progress: bool = True, device: str | torch.device = "auto",
                            top: int = 0) -> None:
    """Encode (on `device`) what `load_training` would read and is not cached yet, without loading it."""
    for corpus in data.corpora:
        if corpus.share > 0:
            encoded(corpus.prepared, data.encoder, data.input_size, ("train",), data.cache, progress, device, top)
    for folder in data.dev:
        encoded(folder, data.encoder, data.input_size, ("dev",), data.cache, progress, device, top)


def load_training(data: DataConfig, progress: bool = True, owns=None, device: str | torch.device = "auto",
                  top: int = 0) -> TrainingData:
    """Every corpus of `data` with its features (encoding what is not cached yet, on `device`; loaded to the
    host) and one vocabulary.

    The vocabulary holds the words seen at least min_count times (the smallest
    the corpora were prepared with) across all the train splits: for one corpus,
    the vocabulary `prepare` wrote. With `owns` (a data-parallel worker's
    `parallel.Workers.owns`), only the training photos it names get their grid read.
    With `top`, each photo's features are the map below the encoder's last `top` blocks (pooled: its mean).
    """
    training = [c for c in data.corpora if c.share > 0]
    train_splits, prepared_all = [], []
    start = 0
    for corpus in training:
        prepared, cache, hashes = encoded(corpus.prepared, data.encoder, data.input_size, ("train",), data.cache,
                                          progress, device, top)
        count = sum(im["split"] == "train" for im in prepared.images)
        grid_of = owns(start + count)[start:].tolist() if owns else None
        train_splits.append(load_split(prepared, cache, hashes, "train", grid_of))
        prepared_all.append(prepared)
        start += count
    dev = {}
    for folder in data.dev:
        prepared, cache, hashes = encoded(folder, data.encoder, data.input_size, ("dev",), data.cache, progress,
                                          device, top)
        name = Path(folder).name if sum(Path(f).name == Path(folder).name for f in data.dev) == 1 else folder
        dev[name] = load_split(prepared, cache, hashes, "dev")
    min_count = min(p.min_count for p in prepared_all)
    vocab = Vocab.build((c.split() for s in train_splits for refs in s.references for c in refs), min_count)
    source = torch.cat([torch.full((len(s.paths),), i) for i, s in enumerate(train_splits)])
    return TrainingData(concat(train_splits), source, [c.share for c in training], dev, vocab,
                        max(p.max_len for p in prepared_all))
