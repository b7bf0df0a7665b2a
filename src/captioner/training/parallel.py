"""Data-parallel training: each worker trains on its part of every batch, and their gradients are averaged.

Every worker draws the same batches (the same seeded generator). A worker's part
of a batch is the photos p with p % size == rank: the photos whose grid features
it holds (see `dataset.load_training`'s shard), so work and features split
evenly and no feature ever moves between workers. A part's loss is normalised
by the whole batch's totals, so the averaged gradient is the gradient one
worker would compute on the whole batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Workers:
    """This process's place among the training workers of one torch.distributed process group."""

    rank: int
    size: int

    def owns(self, photos: int) -> torch.Tensor:
        """[photos] bool: the training photos whose features this worker holds."""
        return torch.arange(photos) % self.size == self.rank

    def part(self, photos: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor,
             rows_of: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[float, float, float]]:
        """This worker's photos of a batch, and the batch's (tokens, captions, photos) per worker.

        captions[p] is how many captions photo p brings; lengths[row] a caption's length with <start> and <end>.
        """
        rows = torch.cat([rows_of[p] for p in photos.tolist()])
        whole = (float((lengths[rows] - 1).sum()), float(captions[photos].sum()), float(len(photos)))
        return photos[photos % self.size == self.rank], tuple(v / self.size for v in whole)

    def average_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Every worker's gradients replaced by their mean over the workers (a missing gradient counts as 0)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        for p, g in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = g.view_as(p).clone()

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the workers."""
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def from_first(self, value: float) -> float:
        """Rank 0's value, on every worker."""
        out = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(out, 0)
        return float(out)
