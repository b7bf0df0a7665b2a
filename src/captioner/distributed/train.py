"""Distributed training on Ray Train: the usual training loop in N workers of a TorchTrainer (gloo, CPU).

Each worker holds the grid features of its shard of the training photos (with a
fine-tuned encoder top, every photo's map below it: they are small) and
trains on its part of every batch; gradients are averaged over the workers
(parallel.py). Rank 0 chooses the epoch on the dev sets and writes the
checkpoint, the logs and the model folder in the usual format, so `--resume`
(with or without Ray) and `Captioner.load` work as after a local run. The
config's folders (corpora, feature cache, out) must be reachable by every
worker under the same path: one machine, or a filesystem shared by the nodes.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import CaptionerError
from ..features.splits import cache_training_features
from ..training.config import Config, config_from_dict
from ..training.parallel import Workers
from ..training.train import check_run, train
from .cluster import DEVICE, connect, pin_threads


def absolute(cfg: Config) -> Config:
    """`cfg` with every folder absolute: Ray workers do not run in this process's working directory."""
    path = lambda p: str(Path(p).resolve()) if p else p  # noqa: E731
    data = replace(cfg.data, corpora=[replace(c, prepared=path(c.prepared)) for c in cfg.data.corpora],
                   dev=[path(d) for d in cfg.data.dev], cache=path(cfg.data.cache))
    return replace(cfg, data=data, train=replace(cfg.train, out=path(cfg.train.out)))


def _worker(config: dict) -> None:
    import ray.train

    context = ray.train.get_context()
    pin_threads(config["cpus"])
    train(config_from_dict(config["config"]), config["resume"], config["stop_after"], config["progress"],
          Workers(context.get_world_rank(), context.get_world_size()), DEVICE)


def train_on_ray(cfg: Config, workers: int, resume: bool = False, stop_after: int | None = None,
                 address: str | None = None, progress: bool = True, cpus_per_worker: int = 1) -> Path:
    """Train as `train.train` does, in `workers` Ray Train workers on the CPU (cluster.DEVICE); returns the model
    folder."""
    cfg = absolute(cfg)
    check_run(cfg, resume)
    cache_training_features(cfg.data, progress, DEVICE, cfg.train.encoder_top)  # once, before the workers read it
    connect(address)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker, train_loop_config={"config": cfg.to_dict(), "resume": resume, "stop_after": stop_after,
                                    "progress": progress, "cpus": cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="captioner-train", storage_path=str(Path(cfg.train.out) / "ray")))
    try:
        trainer.fit()
    except Exception as e:  # a worker's CaptionerError arrives wrapped in Ray's errors: say its sentence
        reason = _captioner_error(e)
        if reason is None:
            raise
        raise CaptionerError(reason) from None
    return Path(cfg.train.out) / "model"


def _captioner_error(error: BaseException) -> str | None:
    """The sentence of a CaptionerError some worker raised, if that is why the training failed."""
    for failure in getattr(error, "worker_failures", {}).values():
        while failure is not None:
            if isinstance(failure, CaptionerError):
                return str(failure).splitlines()[-1] if "\n" in str(failure) else str(failure)
            failure = failure.__cause__
    return None
