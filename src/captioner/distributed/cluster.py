"""Ray for captioner: connecting to a cluster, and what an actor or training worker of it may use.

`--ray-address` (e.g. `auto`, `ray://head:10001`) or Ray's own RAY_ADDRESS names
the cluster; with neither, a local Ray instance is started on this machine.
"""
from __future__ import annotations

import logging
import os

import torch

from ..extras import require

DEVICE = "cpu"
"""Where Ray's actors and training workers run models: Ray schedules them by CPUs (none asks for a GPU), and the
features they encode must carry the key of the CPU's precision wherever the driver runs."""


def require_ray():
    """The `ray` module, or a CaptionerError saying what to install."""
    require("ray", "ray", "ray.data", "ray.train.torch")  # Ray's Data and Train parts, not only its core
    import ray

    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Ray, connected to the cluster at `address` (else RAY_ADDRESS, else a new local instance of `num_cpus`)."""
    ray = require_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"  # local: a new instance, never a stray one
        ray.init(address=address, num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=True, configure_logging=True)
    return ray


def pin_threads(cpus: float) -> int:
    """Run torch with as many threads as the CPUs an actor or worker was given (at least 1); returns that."""
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
