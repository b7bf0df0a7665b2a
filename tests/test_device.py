"""Devices: a name resolves to a device this machine has or to one sentence; every tensor the caption search
and the decoder make follows their inputs; the CPU keeps its bfloat16 path. (Tests run on the CPU.)"""
from __future__ import annotations

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.models import device as devices

HERE = not torch.cuda.is_available() and not torch.backends.mps.is_available()
"""torch sees neither a CUDA GPU nor MPS: the machine these tests are written for."""


@pytest.mark.skipif(not HERE, reason="a GPU is present")
def test_auto_is_the_cpu_here_and_a_gpu_this_machine_lacks_is_one_sentence_naming_what_to_use():
    assert devices.resolve() == devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve("cpu") == devices.resolve(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1", "mps"):
        with pytest.raises(CaptionerError, match=rf"^device {name} is not available here \(.*\): use one of auto, "
                                                  r"cpu$") as e:
            devices.resolve(name)
        assert "\n" not in str(e.value) and str(e.value).count(". ") == 0


def test_an_unknown_device_names_the_choices():
    for name in ("bogus", "meta", "gpu", ""):
        with pytest.raises(CaptionerError, match=rf"^unknown device '{name}': choose one of auto, cpu, cuda, mps$"):
            devices.resolve(name)


def test_auto_takes_cuda_then_mps_then_the_cpu(monkeypatch):
    for cuda, mps, chosen in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert devices.resolve("auto").type == chosen


def test_the_cpu_keeps_its_bfloat16_path_and_float16_never_meets_a_gradient(monkeypatch):
    cpu = torch.device("cpu")
    x = torch.randn(4, 8)
    with devices.autocast(cpu):
        y = x @ x.T
    assert y.dtype == (torch.bfloat16 if devices.cpu_bf16() else torch.float32)
    assert devices.precision(cpu) == ("bf16" if devices.cpu_bf16() else "fp32")
    with devices.autocast(cpu, enabled=False):
        assert (x @ x.T).dtype == torch.float32
    monkeypatch.setattr(devices, "fast_dtype", lambda device: torch.float16)  # a CUDA GPU before Ampere
    with torch.no_grad(), devices.autocast(cpu):
        assert (x @ x.T).dtype == torch.float16  # inference may run at float16...
    with devices.autocast(cpu):
        assert (x @ x.T).dtype == torch.float32  # ...training, which does no loss scaling, may not
