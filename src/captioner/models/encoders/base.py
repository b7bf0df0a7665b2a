"""What every encoder is: a frozen backbone that turns photo pixels into a pooled vector and a grid of cells."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

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

    @property
    def key(self) -> str:
        """Names the features this encoder computes: a new key never reuses cached features."""
        return f"{self.name}-{self.input_size}-{Path(self.weights).stem}-{self.precision}"


Features = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Normalised pixels [B, 3, S, S] -> pooled [B, D] and grid [B, G*G, D] (cells row by row)."""


class Encoder(nn.Module):
    """A frozen backbone: uint8 pixels [B, S, S, 3] -> pooled [B, D] and grid [B, G*G, D].

    `classifier`, where the backbone has one, maps the pooled vector to its ImageNet class logits [B, 1000].
    """

    def __init__(self, spec: EncoderSpec, features: Features, backbone: nn.Module,
                 classifier: nn.Linear | None = None):
        super().__init__()
        self.spec = spec
        self.backbone = backbone.eval().requires_grad_(False)
        self.classifier = classifier
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
        self.backbone.to(memory_format=memory_format(device))
        return self

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels from the host (or anywhere) -> features on the encoder's device."""
        x = torch.as_tensor(pixels, device=self.device).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
        x = ((x - self.mean) / self.std).contiguous(memory_format=memory_format(self.device))
        with autocast(self.device, enabled=self.spec.fast):
            pooled, grid = self._features(x)
        return pooled.float(), grid.float()


def mean_pooled(feature_map: Callable[[torch.Tensor], torch.Tensor]) -> Features:
    """Features from a convolutional feature map [B, D, G, G]: its cells, and their mean as the pooled vector."""
    def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = feature_map(x).float().flatten(2).transpose(1, 2)  # [B, G*G, D]
        return grid.mean(1), grid

    return features
