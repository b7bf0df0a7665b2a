"""The gallery on the Flickr8k test split: indexing speed, text -> photo and photo -> text recall, photo ->
similar photos, speed at scale.

    python benchmarks/gallery.py --data data/flickr8k --work /tmp/gallery-bench
    python benchmarks/gallery.py --data data/coco-val-mini --split dev --recall-only --work /tmp/gallery-coco

1. Indexes the split's photos into a new gallery (photos/s, as `captioner index`).
2. Text -> photo: each human caption is a query (`search`, one by one); R@1/5/10
   and the median rank of its photo, by caption vectors alone, the shipped blend
   with the image vectors, and with likelihood re-ranking (`--rerank`).
   Photo -> text: each photo asks which of all the captions are its own, scored
   as the plain search scores them; R@1/5/10 (any of its captions in the top K).
3. Photo -> similar photos: for each test photo, the CIDEr-D of its 5 nearest
   neighbours' human captions against its own, for each `--by`, against 5 random
   photos and against nearest neighbours in raw pixels (16 x 16 thumbnails).
4. Speed at scale: a gallery of --size synthetic photos (random unit vectors),
   `search` and `similar` warm, median of 50; memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from pycocoevalcap.cider.cider import Cider

from captioner.captioning import Captioner
from captioner.data.corpus import load_prepared
from captioner.data.images import load_photo, to_pixels
from captioner.data.text import clean
from captioner.gallery import SCHEMA, Gallery
from captioner.models.embedding import RetrievalConfig, query_vectors
from captioner.models.tags import tag_bonus


def recall(ranks: np.ndarray) -> dict:
    return {"R@1": round(100 * float((ranks < 1).mean()), 1), "R@5": round(100 * float((ranks < 5).mean()), 1),
            "R@10": round(100 * float((ranks < 10).mean()), 1), "median_rank": float(np.median(ranks) + 1)}


def text_to_photo(g: Gallery, queries: list[str], truth: list[Path], rerank: bool, blend: float | None) -> dict:
    """Each query's photo's rank: from `search` (k=10, re-ranked or not) where it is among the ten found, else
    from the plain search's score of every photo (beyond the ten, the first-stage order stands)."""
    if g.embedding is not None and blend is not None:
        g.embedding.cfg.blend = blend
    photos, scores = plain_scores(g, queries)
    column = {p: j for j, p in enumerate(photos)}
    ranks, times = [], []
    for i, (q, photo) in enumerate(zip(queries, truth)):
        t = time.perf_counter()
        found = [m.path for m in g.search(q, k=10, rerank=rerank)]
        times.append(time.perf_counter() - t)
        if photo in found:
            ranks.append(found.index(photo))
        else:
            ranks.append(max(int((scores[i] > scores[i, column[photo]]).sum()), 10))
    return recall(np.array(ranks)) | {"ms_per_query": round(1000 * statistics.median(times), 1)}


def plain_scores(g: Gallery, queries: list[str]) -> tuple[list[Path], np.ndarray]:
    """The gallery's photos and every query's plain search score of each [queries, photos]: vectors and tag
    bonus, as `search` scores its candidates."""
    with g.catalogue.snapshot() as conn:
        g.vectors.catch_up(conn)
        ids = {Path(path): i for path, i in conn.execute("SELECT path, id FROM photos WHERE caption IS NOT NULL")}
        photos = sorted(ids)
        vectors = g.vectors.text.vectors([ids[p] for p in photos])
        rows = g.catalogue.rows([ids[p] for p in photos])
    scores = query_vectors(g.embedding, queries) @ vectors.T
    words = [set(clean(q)) for q in queries]
    weight = (g.embedding.cfg if g.embedding is not None else RetrievalConfig()).tag_weight
    for j, p in enumerate(photos):
        tags = rows[ids[p]].tags
        if tags:
            scores[:, j] += [tag_bonus(w, tags, weight) for w in words]
    return photos, scores


def photo_to_text(g: Gallery, queries: list[str], truth: list[Path]) -> dict:
    """Each photo's captions ranked among all `queries` by the plain search's score (vectors and tag bonus)."""
    photos, scores = plain_scores(g, queries)
    column = {p: j for j, p in enumerate(photos)}
    own = np.array([column[p] for p in truth])
    ranks = []
    for j in range(len(photos)):
        order = np.argsort(-scores[:, j], kind="stable")
        ranks.append(int(np.flatnonzero(own[order] == j)[0]))
    return recall(np.array(ranks))


def neighbour_cider(references: dict[Path, list[str]], neighbours: dict[Path, list[Path]]) -> float:
    """Mean CIDEr-D of each neighbour's human captions against the query photo's."""
    gts, res = {}, {}
    for q, found in neighbours.items():
        for j, other in enumerate(found):
            for r, sentence in enumerate(references[other]):
                key = f"{q}|{j}|{r}"
                gts[key], res[key] = references[q], [sentence]
    return round(100 * Cider().compute_score(gts, res)[0], 1)


def pixel_neighbours(paths: list[Path], k: int) -> dict[Path, list[Path]]:
    thumbs = np.stack([to_pixels(load_photo(p, 16), 16).reshape(-1) for p in paths]).astype(np.float32)
    thumbs -= thumbs.mean(1, keepdims=True)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True) + 1e-8
    sims = thumbs @ thumbs.T
    np.fill_diagonal(sims, -np.inf)
    return {p: [paths[j] for j in np.argsort(-sims[i])[:k]] for i, p in enumerate(paths)}


def synthetic_gallery(db: Path, real: Gallery, size: int) -> None:
    """A gallery of `size` photos with random unit vectors, written straight into the catalogue."""
    rng = np.random.default_rng(0)
    meta = real.catalogue.meta()
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    vd, td = real.vectors.visual.dim, real.vectors.text.dim
    for start in range(0, size, 10_000):
        n = min(10_000, size - start)
        v = rng.standard_normal((n, vd), dtype=np.float32)
        t = rng.standard_normal((n, td), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        conn.executemany("INSERT INTO photos (path, sha256, size, mtime_ns, caption, alternatives, score, error, "
                         "indexed_at, visual, text) VALUES (?, ?, 0, 0, 'a synthetic photo', '[]', 0, NULL, '', ?, ?)",
                         [(f"/synthetic/{start + i}.jpg", f"{start + i:064x}", v[i].astype(np.float16).tobytes(),
                           t[i].astype(np.float16).tobytes()) for i in range(n)])
    conn.commit()
    conn.close()


def timed(fn, repeat: int = 50) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a prepared corpus (Flickr8k: the published figures' corpus)")
    ap.add_argument("--split", default="test", help="its split to index and query (default test)")
    ap.add_argument("--recall-only", action="store_true", help="index and measure recall; no similar, no scale")
    ap.add_argument("--no-rerank", action="store_true", help="leave out the re-ranked search (the slowest part)")
    ap.add_argument("--work", required=True, help="a scratch folder for the galleries")
    ap.add_argument("--model", help="model folder (default: the shipped model)")
    ap.add_argument("--size", type=int, default=100_000, help="photos in the synthetic gallery")
    ap.add_argument("--queries", type=int, default=0, help="use only the first N queries (0: all 5000)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepared = load_prepared(args.data)
    test = [im for im in prepared.images if im["split"] == args.split]
    paths = [(prepared.image_root / im["image"]).resolve() for im in test]
    out: dict = {"machine": f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"}

    db = work / "test.db"
    for f in work.glob("test.db*"):
        f.unlink()
    captioner = Captioner.load(args.model)
    g = Gallery.create(db, captioner=captioner)
    report = g.index(paths, progress=True)
    out["index"] = {"photos": report.encoded, "seconds": round(report.seconds, 1),
                    "photos_per_s": round(report.encoded / report.seconds, 1)}
    print(json.dumps(out["index"]), flush=True)

    queries = [(c, p) for im, p in zip(test, paths) for c in im["raw"]]
    if args.queries:
        queries = queries[:args.queries]
    texts, truth = [q for q, _ in queries], [p for _, p in queries]
    shipped = g.embedding.cfg.blend if g.embedding is not None else None
    out["text_to_photo"] = {}
    settings = [("caption vectors", False, 0.0)] if g.embedding is not None else []
    settings += [("shipped search", False, shipped)] + ([("shipped search --rerank", True, shipped)]
                                                         if not args.no_rerank else [])
    for name, rerank, blend in settings:
        out["text_to_photo"][name] = text_to_photo(g, texts, truth, rerank, blend)
        print(name, json.dumps(out["text_to_photo"][name]), flush=True)
    if g.embedding is not None:
        g.embedding.cfg.blend = shipped
    out["photo_to_text"] = photo_to_text(g, texts, truth)
    print("photo to text", json.dumps(out["photo_to_text"]), flush=True)
    if args.recall_only:
        g.close()
        (work / "gallery-benchmark.json").write_text(json.dumps(out, indent=1))
        return

    refs = {p: im["captions"] for im, p in zip(test, paths)}
    ids = {Path(path): i for path, i in g.catalogue.conn.execute("SELECT path, id FROM photos")}
    rng = np.random.default_rng(0)
    photos = list(refs)
    out["photo_to_similar_cider"] = {
        "random": neighbour_cider(refs, {p: [photos[j] for j in rng.choice(
            [i for i in range(len(photos)) if photos[i] != p], 5, replace=False)] for p in photos}),
        "raw pixels": neighbour_cider(refs, pixel_neighbours(photos, 5)),
    }
    for by in ("visual", "caption", "both"):
        out["photo_to_similar_cider"][f"--by {by}"] = neighbour_cider(
            refs, {p: [m.path for m in g.similar(ids[p], k=5, by=by)] for p in photos})
    print("similar", json.dumps(out["photo_to_similar_cider"]), flush=True)
    g.close()

    big = work / "synthetic.db"
    for f in work.glob("synthetic.db*"):
        f.unlink()
    real = Gallery.open(db, captioner=captioner)
    synthetic_gallery(big, real, args.size)
    real.close()
    t = time.perf_counter()
    s = Gallery.open(big, captioner=captioner)
    opened = time.perf_counter() - t
    s.save_vectors()
    t = time.perf_counter()
    Gallery.open(big, captioner=captioner).close()
    reopened = time.perf_counter() - t
    out["scale"] = {
        "photos": len(s), "open_rebuilding_s": round(opened, 2), "open_s": round(reopened, 2),
        "search_ms": timed(lambda: s.search("a dog runs through the snow", k=8)),
        "similar_by_id_ms": {by: timed(lambda: s.similar(1, k=8, by=by)) for by in ("visual", "caption", "both")},
        "vectors_file_mb": round(s.vectors.path.stat().st_size / 2**20, 1),
        "db_mb": round(big.stat().st_size / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print("scale", json.dumps(out["scale"]), flush=True)
    (work / "gallery-benchmark.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
