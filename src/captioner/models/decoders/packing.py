"""Inference on the CPU in bfloat16 with the weights laid out for oneDNN once (`pack`), not at every call."""
from __future__ import annotations

import torch
from torch import nn

from .base import State


class PackedLinear(nn.Module):
    """A frozen bfloat16 nn.Linear on the CPU whose weight oneDNN lays out for its kernel once, not at every
    call as nn.Linear's is: a one-word decoding step's products take half the time, with the same numbers.
    The Linear's weight and bias stay, so the state dict is unchanged."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class PackedLSTMCell(nn.Module):
    """nn.LSTMCell with its two products packed as PackedLinear's: the same arithmetic as torch's own cell
    (gates = W_hh h + b_hh + W_ih x + b_ih; input, forget, cell and output gates in that order)."""

    def __init__(self, cell: nn.LSTMCell):
        super().__init__()
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh = (
            cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        self.packed_ih, self.packed_hh = (torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
                                          for w in (cell.weight_ih, cell.weight_hh))

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        gates = torch.ops.mkldnn._linear_pointwise(h, self.packed_hh, self.bias_hh, "none", [], "").add_(
            torch.ops.mkldnn._linear_pointwise(x, self.packed_ih, self.bias_ih, "none", [], ""))
        i, f, g, o = gates.unsafe_chunk(4, 1)
        c = (f.sigmoid_() * c).add_(i.sigmoid_() * g.tanh_())
        return o.sigmoid_() * c.tanh(), c


def pack(decoder: nn.Module) -> nn.Module:
    """The decoder, for inference only, with each Linear and LSTMCell packed (PackedLinear) where it runs
    in bfloat16 on a CPU whose torch has oneDNN; otherwise as it is."""
    weight = next(decoder.parameters())
    if (weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available()
            or not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))):
        return decoder
    packed = {nn.Linear: PackedLinear, nn.LSTMCell: PackedLSTMCell}
    for module in list(decoder.modules()):
        for name, child in module.named_children():
            if type(child) in packed:
                setattr(module, name, packed[type(child)](child))
    return decoder.requires_grad_(False)
