"""A training run's checkpoint: the decoder (and a fine-tuned encoder top), the optimiser, the random state and
where the run is, in one
safetensors file written whole, so a killed run resumes exactly. Its tensors are host copies: it loads on any
device (exactly resumed on the kind of device it was made on, whose own random state it also holds)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..files import atomic_path
from ..models.decoders import Decoder
from ..models.device import rng_state, set_rng_state
from ..models.encoders.base import Top


def save(path: Path, decoder: Decoder, opt: torch.optim.Optimizer, state: dict, top: Top | None = None) -> None:
    """Write the decoder's (and the `top`'s) and the optimiser's tensors, torch's random state (and the decoder's
    device's) and `state` (JSON) to `path`."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    if top is not None:
        tensors |= {f"top.{k}": v.detach().cpu().contiguous() for k, v in top.state_dict().items()}
    opt_state = opt.state_dict()
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            v = v.detach().cpu()
            tensors[f"opt.{i}.{k}"] = v.reshape(-1) if v.dim() == 0 else v.contiguous()
    tensors["rng"] = torch.get_rng_state()
    device = decoder.device
    if (device_rng := rng_state(device)) is not None:  # dropout on a GPU draws from the GPU's generator
        tensors[f"rng.{device.type}"] = device_rng.cpu()
    meta = {**state, "param_groups": opt_state["param_groups"]}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})


def load(path: Path, decoder: Decoder, opt: torch.optim.Optimizer, top: Top | None = None) -> dict:
    """Restore what `save` wrote into `decoder` (and `top`), `opt` and torch's random state; returns the run's
    state."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    decoder.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if top is not None:
        top.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("top.")})
    opt_state: dict = {"state": {}, "param_groups": meta.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
    opt.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng"])
    device = decoder.device
    if f"rng.{device.type}" in tensors:
        set_rng_state(device, tensors[f"rng.{device.type}"])
    return meta
