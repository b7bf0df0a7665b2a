"""Vectors by integer id, searched by inner product: a thin layer over a faiss index.

Exact search over float16 vectors (a flat scalar-quantizer index): at gallery
sizes (10^5 photos) one query scans every vector in milliseconds, with nothing
approximate to tune and cheap removal; float16 halves the memory of float32 and
scans several times faster, as the scan is bound by memory bandwidth. A query
runs on one OpenMP thread: a single query is answered faster without the
threads' start-up, and concurrent queries run in their own threads.
benchmarks/vector_index.py has the measurements behind these choices.
"""
from __future__ import annotations

import faiss
import numpy as np


class VectorIndex:
    def __init__(self, dim: int, index: faiss.Index | None = None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(
            faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT))

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors [n, dim] under ids [n]; an id already present is replaced."""
        ids = np.asarray(ids, dtype=np.int64)
        self.remove(ids)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and self.index.ntotal:
            self.index.remove_ids(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best (scores [q, k'], ids [q, k']) per query [q, dim], k' = min(k, len(self))."""
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        # The thread count is this thread's OpenMP setting, which torch shares: set it back afterwards.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        finally:
            faiss.omp_set_num_threads(threads)

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors [n, dim] of ids [n] (each must be present)."""
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim))

    def to_bytes(self) -> np.ndarray:
        return faiss.serialize_index(self.index)

    @classmethod
    def from_bytes(cls, data: np.ndarray) -> "VectorIndex":
        index = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        return cls(index.d, index)
