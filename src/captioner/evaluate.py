"""Evaluation on a split of a prepared corpus, the COCO caption toolkit's way."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from .corpus import load_prepared
from .dataset import ensure_features, load_split
from .decode import beam_search
from .metrics import diversity, score_captions
from .modelfolder import load_model
from .report import write_report
from .text import detokenize


def evaluate(model_dir: str | Path | None, data: str | Path, split: str = "test", beam: int | None = None,
             out: str | Path | None = None, cache: str | Path | None = None, progress: bool = True,
             batch_size: int = 100, length_penalty: float | None = None, block_ngram: int | None = None) -> dict:
    """Caption every photo of `split` and score against its human captions; writes report.json and report.html.

    `beam`, `length_penalty` and `block_ngram` default to the model's own decoding settings.
    """
    model = load_model(model_dir, fast=True)  # scored exactly as `captioner caption` decodes
    beam = beam or model.decode.beam
    if length_penalty is None:
        length_penalty = model.decode.length_penalty
    if block_ngram is None:
        block_ngram = model.decode.block_ngram
    prepared = load_prepared(data)
    cache_root = cache or Path(data) / "features"
    feature_cache, hashes = ensure_features(prepared, model.encoder, model.input_size, cache_root, (split,), progress)
    photos = load_split(prepared, feature_cache, hashes, split)
    started = time.time()
    captions, scores = [], []
    for start in tqdm(range(0, len(photos.paths), batch_size), desc=f"captioning {split}", unit="batch",
                      disable=not progress):
        hyps = beam_search(model.decoder, photos.pooled[start:start + batch_size],
                           photos.grid[start:start + batch_size], beam, model.decode.max_len, length_penalty,
                           block_ngram)
        captions.extend([model.vocab.words[t] for t in h[0].tokens] for h in hyps)
        scores.extend(h[0].logprob for h in hyps)
    seconds = time.time() - started
    ids = [str(p) for p in photos.paths]
    predictions = {i: " ".join(words) for i, words in zip(ids, captions)}
    metrics = score_captions(predictions, dict(zip(ids, photos.raw)))
    variety = diversity(predictions)
    samples = [{"path": i, "caption": detokenize(words), "references": refs, "score": round(s, 4)}
               for i, words, refs, s in zip(ids, captions, photos.raw, scores)]
    meta = {"model": str(model_dir or "shipped default"), "corpus": str(data), "split": split, "beam": beam,
            "length_penalty": length_penalty, "block_ngram": block_ngram, "photos": len(ids),
            "decode_seconds": round(seconds, 2), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads()}
    out = Path(out) if out else Path(model_dir or ".") / f"eval-{split}"
    json_path, html_path = write_report(out, scores=metrics, diversity=variety, samples=samples, meta=meta)
    return {"scores": metrics, "diversity": variety, "json": json_path, "html": html_path, "meta": meta}
