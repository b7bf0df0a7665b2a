"""Which vector index should hold the gallery's vectors? Build, search, size and recall at 100,000 vectors.

    python benchmarks/vector_index.py --count 100000

Compares exact search (faiss flat, float32 and float16) with HNSW graphs (faiss,
usearch, hnswlib) on random unit vectors of the gallery's two widths: 1280 (the
encoder's image vectors) and 768 (caption + text-aligned image vectors).
Recall@10 is against exact search. One query at a time, as `search` runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_flat(d: int, fp16: bool):
    import faiss

    inner = (faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
             if fp16 else faiss.IndexFlatIP(d))
    index = faiss.IndexIDMap2(inner)
    return (lambda ids, x: index.add_with_ids(x, ids)), (lambda q, k: index.search(q[None], k)[1][0]), \
        (lambda: faiss.serialize_index(index).nbytes)


def faiss_hnsw(d: int):
    import faiss

    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 64
    index = faiss.IndexIDMap2(hnsw)
    return (lambda ids, x: index.add_with_ids(x, ids)), (lambda q, k: index.search(q[None], k)[1][0]), \
        (lambda: faiss.serialize_index(index).nbytes)


def usearch_hnsw(d: int):
    from usearch.index import Index

    index = Index(ndim=d, metric="ip", dtype="f16", connectivity=16, expansion_search=64)
    return (lambda ids, x: index.add(ids, x)), (lambda q, k: index.search(q, k).keys), \
        (lambda: index.memory_usage)


def hnswlib_hnsw(d: int):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=200_000, M=16, ef_construction=200, allow_replace_deleted=True)
    index.set_ef(64)
    return (lambda ids, x: index.add_items(x, ids)), (lambda q, k: index.knn_query(q, k)[0][0]), \
        (lambda: index.get_current_count() * (d * 4 + 16 * 2 * 8))


KINDS = {"faiss-flat-f32": lambda d: faiss_flat(d, False), "faiss-flat-f16": lambda d: faiss_flat(d, True),
         "faiss-hnsw": faiss_hnsw, "usearch-hnsw-f16": usearch_hnsw, "hnswlib-hnsw": hnswlib_hnsw}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for d in (1280, 768):
        data, queries = unit(rng, args.count, d), unit(rng, args.queries, d)
        exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
        ids = np.arange(args.count, dtype=np.int64)
        for kind in args.kinds:
            add, search, size = KINDS[kind](d)
            t = time.perf_counter()
            add(ids, data)
            build = time.perf_counter() - t
            times, hits = [], 0
            for q, truth in zip(queries, exact):
                t = time.perf_counter()
                found = search(q, 10)
                times.append((time.perf_counter() - t) * 1000)
                hits += len(set(np.asarray(found).tolist()) & set(truth.tolist()))
            print(f"d={d:5d} {kind:18s} build {build:6.1f} s  search median {statistics.median(times):6.2f} ms"
                  f"  p95 {np.percentile(times, 95):6.2f} ms  size {size() / 2**20:6.0f} MB"
                  f"  recall@10 {hits / (10 * len(queries)):.3f}", flush=True)


if __name__ == "__main__":
    main()
