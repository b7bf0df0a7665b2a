"""Batch captioning and feature encoding on Ray Data: an actor pool that loads the model once per actor.

The photo list is cut into the same batches the local path makes and becomes a
Ray Dataset of one row per batch; `map_batches` hands each batch to an actor of
the pool, which runs exactly the local code on it (so a photo that fails is
reported with the local sentence, and never fails its batch), and the results
stream back in input order, one row per photo.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..captioning import Caption, Captioner
from ..data.images import expand_paths
from ..features.cache import Batch, encode_photos
from ..models.encoders import load_encoder
from .cluster import DEVICE, connect, pin_threads


class CaptionActor:
    """Holds one loaded captioner; captions one batch of photo paths per call, one output row per photo."""

    def __init__(self, model: str | None, beam: int | None, attention: bool, search: bool, cpus: float):
        pin_threads(cpus)
        self.captioner = Captioner.load(model, search, DEVICE)
        self.beam = beam
        self.attention = attention

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["paths"][0]]
        captions = self.captioner.stream(paths, self.beam, batch_size=len(paths))
        return {"caption": np.array([json.dumps(c.to_dict() | ({} if self.attention else {"attention": None}))
                                     for c in captions])}


class EncodeActor:
    """Holds one loaded encoder (with `top`, its bottom: see load_encoder); encodes one batch of photo paths per
    call: pooled, grid, error, warning a photo."""

    def __init__(self, encoder: str, input_size: int, cpus: float, top: int = 0):
        pin_threads(cpus)
        self.encoder = load_encoder(encoder, input_size, DEVICE, top)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [Path(p) for p in batch["paths"][0]]
        (ok, pooled, grid, errors, warned, _), = encode_photos(self.encoder, paths, len(paths), progress=False)
        spec = self.encoder.spec
        out_pooled = np.zeros((len(paths), spec.dim), np.float32)
        out_grid = np.zeros((len(paths), spec.grid * spec.grid, spec.dim), np.float32)
        if ok:
            out_pooled[ok], out_grid[ok] = pooled.float().numpy(), grid.float().numpy()
        return {"error": np.array([errors.get(i, "") for i in range(len(paths))]),
                "warning": np.array([warned.get(i, "") for i in range(len(paths))]), "pooled": out_pooled,
                "grid": out_grid}


def run_ordered(actor: type, kwargs: dict, paths: Sequence[str], batch_size: int, actors: int | None = None,
                address: str | None = None, progress: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The output of `actor` on `paths` cut into batches of `batch_size`, batch by batch, in input order.

    `actors` of 1 CPU each (default: one per CPU of the cluster); an actor that
    dies is restarted and its batch run again.
    """
    ray = connect(address)
    from ray.data import ActorPoolStrategy, DataContext

    if not paths:
        return
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = progress
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    batches = [{"paths": list(paths[i:i + batch_size])} for i in range(0, len(paths), batch_size)]
    dataset = ray.data.from_items(batches, override_num_blocks=len(batches)).map_batches(
        actor, fn_constructor_kwargs=kwargs | {"cpus": 1}, batch_size=1, batch_format="numpy", num_cpus=1,
        compute=ActorPoolStrategy(size=min(actors, len(batches))), max_restarts=-1, max_task_retries=-1)
    yield from dataset.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)


def caption_stream(model: str | None = None, actors: int | None = None, address: str | None = None,
                   attention: bool = False, search: bool = False, actor: type = CaptionActor):
    """A drop-in for `Captioner.stream` that captions on Ray actors: the same Captions, in the same order
    (`search`: for a gallery, see Captioner.search)."""
    def stream(photos: Iterable[str | Path], beam: int | None = None, batch_size: int = 16,
               progress: bool = False) -> Iterator[Caption]:
        paths = [str(p) for p in expand_paths(photos)]
        kwargs = {"model": model, "beam": beam, "attention": attention, "search": search}
        for batch in run_ordered(actor, kwargs, paths, batch_size, actors, address, progress):
            yield from (Caption.from_dict(json.loads(c)) for c in batch["caption"])
    return stream


def encode_stream(encoder: str, input_size: int, actors: int | None = None, address: str | None = None,
                  top: int = 0):
    """A drop-in for `encode_photos` that encodes on Ray actors (with `top`, the map below the encoder's top): the
    same batches, in the same order."""
    def encode(paths: Sequence[Path], batch_size: int = 32, progress: bool = True):
        start = 0
        for batch in run_ordered(EncodeActor, {"encoder": encoder, "input_size": input_size, "top": top},
                                 [str(p) for p in paths], batch_size, actors, address, progress):
            failed = [bool(e) for e in batch["error"]]
            ok = [i for i, bad in enumerate(failed) if not bad]
            yield Batch([start + i for i in ok], torch.from_numpy(batch["pooled"][ok]),
                        torch.from_numpy(batch["grid"][ok]),
                        {start + i: str(e) for i, e in enumerate(batch["error"]) if e},
                        {start + i: str(w) for i, w in enumerate(batch["warning"]) if w})
            start += len(failed)
    return encode
