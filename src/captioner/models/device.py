"""Where models run: the device a user names (auto, cpu, cuda, mps) and the precision captioner runs at there.

`resolve` turns a name into a torch.device once, at each entry point (`Captioner.load`, `load_encoder`,
`load_model`, `train`, `align`, `calibrate`, `evaluate`, the feature cache, the gallery, `serve`).
Below it, a model's weights and fixed tensors live on its device; features move there where a module reads
them (the encoder takes pixels from the host, `Decoder.start` features from anywhere); a tensor made inside
a computation is made on its inputs' device, never on torch's default; and what leaves as numbers
(captions, feature shards, model folders, checkpoints) goes back to the host first, so it loads anywhere.

The precision policy is here, in one place: `fast_dtype` is the reduced precision a device runs well, and
`autocast` runs a block at it.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from ..errors import CaptionerError

NAMES = ("auto", "cpu", "cuda", "mps")
"""What a user may name (a CUDA device also with its index, cuda:1)."""


def resolve(name: str | torch.device = "auto") -> torch.device:
    """The device `name` names; auto takes CUDA, then MPS, else the CPU.

    A device this machine cannot use is a CaptionerError naming what to use instead.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in NAMES:
        raise CaptionerError(f"unknown device {str(name)!r}: choose one of {', '.join(NAMES)}")
    why = _unavailable(device)
    if why:
        usable = ", ".join(["auto", "cpu"] + [d for d in ("cuda", "mps") if _unavailable(torch.device(d)) is None])
        raise CaptionerError(f"device {device} is not available here ({why}): use one of {usable}")
    return device


def _mps() -> bool:
    return torch.backends.mps.is_available()


def _unavailable(device: torch.device) -> str | None:
    """Why this machine cannot run on `device`, or None if it can."""
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            return f"this torch, {torch.__version__}, is built without CUDA; a GPU needs a CUDA build of torch"
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            return "torch finds no CUDA GPU on this machine"
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
    if device.type == "mps" and not _mps():
        return "MPS needs a Mac with Apple silicon, macOS 12.3 or later, and a torch built for it"
    return None


@functools.cache
def cpu_bf16() -> bool:
    """True where the CPU runs bfloat16 natively (about twice the speed of float32 there)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def fast_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision `device` runs well: bfloat16 on a CPU that runs it natively and on CUDA GPUs from
    Ampere on, float16 on older CUDA GPUs; float32 elsewhere (on MPS reduced precision is not verified)."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16() else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return torch.float32


def precision(device: torch.device) -> str:
    """`fast_dtype(device)`'s short name (bf16, fp16, fp32): names the features an encoder computes there."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(fast_dtype(device), "fp32")


def autocast(device: torch.device, enabled: bool = True):
    """A context that runs its block's matrix products at `fast_dtype(device)` (if `enabled`); a no-op where
    that is float32. Where a gradient is taken, float16 is not used: captioner does no loss scaling, and
    small float16 gradients would vanish (bfloat16 has float32's range)."""
    dtype = fast_dtype(device)
    if not enabled or dtype == torch.float32 or (dtype == torch.float16 and torch.is_grad_enabled()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout convolutions run fastest in on `device`: channels last on the CPU and CUDA."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def rng_state(device: torch.device) -> torch.Tensor | None:
    """The state of `device`'s own random generator (dropout there draws from it); None on the CPU, whose
    state is torch.get_rng_state()."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    """Restore what `rng_state(device)` gave."""
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)
