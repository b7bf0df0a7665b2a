"""What every encoder is: a frozen backbone that turns photo pixels into a pooled vector and a grid of cells.

A convolutional encoder can also be split at a block boundary (`load_encoder(..., top=K)`): its bottom, everything
below its last K blocks, gives the map below them (cached like any encoder's features), and its `Top`, those
blocks and the head, turns that map into the features. A model may carry a copy of the top fine-tuned for
captions (`with_tuned_top`): its decoder reads that copy's features, and everything else the encoder's own.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..device import autocast, memory_format, precision


@dataclass(frozen=True)
class EncoderSpec:
    """What the rest of captioner needs to know about an encoder."""

    name: str
    input_size: int  # photos are squashed to input_size x input_size
    dim: int  # channels of the pooled vector and of each grid cell
    grid: int  # the grid is grid x grid cells
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # file name of the shipped weights: part of the feature-cache key
    fast: bool = True  # runs at its device's fast precision (device.fast_dtype: bfloat16 on most CPUs); else float32
    precision: str = "fp32"  # what it runs at on the device it is placed on (Encoder.place): bf16, fp16 or fp32
    below: int | None = None  # an encoder's bottom: its features are the map below this block (None: the whole)

    @property
    def key(self) -> str:
        """Names the features this encoder computes: a new key never reuses cached features."""
        split = "" if self.below is None else f"-below{self.below}"
        return f"{self.name}-{self.input_size}-{Path(self.weights).stem}{split}-{self.precision}"


FeatureMap = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Normalised pixels [B, 3, S, S] -> pooled [B, D] and grid [B, G*G, D] (cells row by row)."""


class Features(NamedTuple):
    """What an encoder makes of a batch of photos.

    pooled [B, D] and grid [B, G*G, D] are the encoder's own features: what its ImageNet classifier (the tags),
    the confidence, the search embedding and likeness read. `tuned`, for a model whose encoder top was
    fine-tuned for captions, is that top's (pooled, grid): what its decoder reads. None: the decoder reads
    pooled and grid.
    """

    pooled: torch.Tensor
    grid: torch.Tensor
    tuned: tuple[torch.Tensor, torch.Tensor] | None = None


class Top(nn.Module):
    """An encoder's last `blocks` blocks and its head: the map below them as cells [B, N, C] (its bottom's grid,
    row by row) -> pooled [B, D] and grid [B, G*G, D].

    It always runs in eval mode, training or not: its BatchNorm layers keep the statistics ImageNet left them
    (their scale and shift may still be trained), and nothing in it is random.
    """

    def __init__(self, layers: nn.Module, blocks: int, side: int, dim: int, grid: int):
        super().__init__()
        self.layers = layers.eval()
        self.blocks, self.side, self.dim, self.grid = blocks, side, dim, grid

    def train(self, mode: bool = True) -> Top:
        return super().train(False)

    def forward(self, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, N, C] contiguous is a [B, C, side, side] map in channels-last memory: a view, no copy
        below = cells.float().transpose(1, 2).unflatten(2, (self.side, self.side))
        return mean_pooled(self.layers)(below)


class Encoder(nn.Module):
    """A frozen backbone: uint8 pixels [B, S, S, 3] -> Features (pooled [B, D] and grid [B, G*G, D]).

    `classifier`, where the backbone has one, maps the pooled vector to its ImageNet class logits [B, 1000].
    `top`, where the encoder is a bottom (spec.below), is the top it was split from (frozen; its features are
    what the pooled vector means to the classifier). `tuned`, for a model's encoder, is a fine-tuned copy of
    `top`: the encoder then runs its bottom once and both tops, and gives `top`'s features with `tuned`'s
    beside them (Features.tuned).
    """

    def __init__(self, spec: EncoderSpec, features: FeatureMap, backbone: nn.Module,
                 classifier: nn.Linear | None = None, top: Top | None = None, tuned: Top | None = None):
        super().__init__()
        self.spec = spec
        self.backbone = backbone.eval().requires_grad_(False)
        self.classifier = classifier
        self.top = None if top is None else top.requires_grad_(False)
        self.tuned = None if tuned is None else tuned.requires_grad_(False)
        self._features = features
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the encoder runs (and its features come out)."""
        return self.mean.device

    def place(self, device: torch.device) -> Encoder:
        """This encoder moved to `device`, its convolutions in the layout they run fastest in there; its spec
        (and so its features' key) names the precision it runs at there."""
        self.spec = replace(self.spec, precision=precision(device) if self.spec.fast else "fp32")
        self.to(device)
        for module in (self.backbone, self.top, self.tuned):
            if module is not None:
                module.to(memory_format=memory_format(device))
        return self

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor | np.ndarray) -> Features:
        """Pixels from the host (or anywhere) -> features on the encoder's device."""
        x = torch.as_tensor(pixels, device=self.device).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
        x = ((x - self.mean) / self.std).contiguous(memory_format=memory_format(self.device))
        with autocast(self.device, enabled=self.spec.fast):
            pooled, grid = self._features(x)
        return self.above(grid) if self.tuned is not None else Features(pooled.float(), grid.float())

    @torch.inference_mode()
    def above(self, cells: torch.Tensor) -> Features:
        """A model's encoder (with `tuned`): the features of photos from the map below its tops, cells [B, N, C]
        (its bottom's grid, as cached), on any device."""
        cells = cells.to(self.device)
        with autocast(self.device, enabled=self.spec.fast):
            pooled, grid = self.top(cells)
            tuned = self.tuned(cells)
        return Features(pooled.float(), grid.float(), (tuned[0].float(), tuned[1].float()))


def with_tuned_top(bottom: Encoder, weights: Mapping[str, torch.Tensor]) -> Encoder:
    """The encoder of a model with a fine-tuned top: `bottom` (an encoder split by load_encoder's `top`), its own
    top, and a copy of that top holding `weights`, on `bottom`'s device. Its spec is the whole encoder's."""
    tuned = copy.deepcopy(bottom.top)
    tuned.load_state_dict(weights)
    spec = replace(bottom.spec, dim=bottom.top.dim, grid=bottom.top.grid, below=None)
    encoder = Encoder(spec, bottom._features, bottom.backbone, bottom.classifier, bottom.top, tuned)
    return encoder.to(bottom.device)


def mean_pooled(feature_map: Callable[[torch.Tensor], torch.Tensor]) -> FeatureMap:
    """Features from a convolutional feature map [B, D, G, G]: its cells, and their mean as the pooled vector."""
    def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = feature_map(x).float().flatten(2).transpose(1, 2)  # [B, G*G, D]
        return grid.mean(1), grid

    return features
