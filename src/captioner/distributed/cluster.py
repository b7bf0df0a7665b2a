"""Ray for captioner: connecting to a cluster, and what an actor or training worker of it may use.

`--ray-address` (e.g. `auto`, `ray://head:10001`) or Ray's own RAY_ADDRESS names
the cluster; with neither, a local Ray instance is started on this machine.
"""
from __future__ import annotations

import logging
import os
import socket

import torch

from ..errors import CaptionerError
from ..extras import require

REACH_SECONDS = 10.0
"""How long a cluster's address may take to answer: Ray itself would wait minutes, then fail with a traceback."""
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
        if address != "local":
            check_reachable(address)
        chatty = logging.getLogger("ray").isEnabledFor(logging.INFO)  # Ray's own lines: only with `captioner -v`
        ray.init(address=address, num_cpus=num_cpus if address == "local" else None, include_dashboard=False,
                 logging_level=logging.INFO if chatty else logging.ERROR, log_to_driver=chatty,
                 configure_logging=True)
    return ray


def _endpoint(address: str) -> tuple[str, int]:
    """The host and port Ray connects to for `address` (auto: the cluster `ray start` last started here)."""
    from ray._private.services import canonicalize_bootstrap_address

    fix = "give --ray-address (or RAY_ADDRESS) as HOST:PORT, ray://HOST:PORT or auto"
    try:
        # Ray's own resolution: it reads auto's address, and reaches 127.0.0.1 at this machine's address.
        host, _, port = (address.split("://", 1)[1] if "://" in address
                         else canonicalize_bootstrap_address(address)).rpartition(":")
        return host.strip("[]"), int(port)
    except ConnectionError:
        raise CaptionerError(f"the Ray address {address} names the cluster started on this machine, and none is: "
                             f"start one with `ray start --head`, or {fix}") from None
    except ValueError:
        raise CaptionerError(f"{address!r} is not a Ray cluster address: {fix}") from None


def check_reachable(address: str) -> None:
    """Fail within seconds, in one sentence, when the cluster at `address` does not answer."""
    host, port = _endpoint(address)
    try:
        socket.create_connection((host, port), timeout=REACH_SECONDS).close()
    except OSError as e:
        why = e.strerror or str(e) or "no answer"
        raise CaptionerError(f"the Ray cluster at {address} does not answer at {host}:{port} ({why}): check that "
                             "it runs (`ray status` on its head) and that this machine can reach it, or give "
                             "another with --ray-address or RAY_ADDRESS") from None


def pin_threads(cpus: float) -> int:
    """Run torch with as many threads as the CPUs an actor or worker was given (at least 1); returns that."""
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
