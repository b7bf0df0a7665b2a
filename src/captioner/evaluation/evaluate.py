"""Evaluation on a split of a prepared corpus, the COCO caption toolkit's way."""
from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.corpus import load_prepared
from ..data.dataset import Split, ensure_features, load_split
from ..data.text import detokenize
from ..models.decode import Hypothesis, beam_search
from ..models.encoders import load_encoder
from ..models.folder import Model, load_model
from ..models.tags import Tagger, tagger
from ..training.config import DecodeConfig
from .metrics import diversity, score_captions
from .report import write_report


def load_photos(model: Model, data: str | Path, split: str, cache: str | Path | None, progress: bool) -> Split:
    """The photos of one split of a prepared corpus with the model's encoder features (encoded if not cached)."""
    prepared = load_prepared(data)
    feature_cache, hashes = ensure_features(prepared, model.encoder, model.input_size,
                                            cache or Path(data) / "features", (split,), progress)
    return load_split(prepared, feature_cache, hashes, split)


def decode_split(model: Model, tags: Tagger | None, photos: Split, settings: DecodeConfig, batch_size: int = 100,
                 progress: bool = True) -> tuple[list[list[Hypothesis]], torch.Tensor | None]:
    """Each photo's beam, best first, decoded with `settings` (guided by `tags` when their weight is set),
    and the photos' class probabilities [n, C] (None without a tagger)."""
    beams, probs = [], []
    for start in tqdm(range(0, len(photos.paths), batch_size), desc="captioning", unit="batch",
                      disable=not progress):
        pooled = photos.pooled[start:start + batch_size]
        p = tags.probabilities(pooled) if tags else None
        guide = tags.guide(p, settings.tag_weight) if tags and settings.tag_weight else None
        beams += beam_search(model.decoder, pooled, photos.grid[start:start + batch_size], settings.beam,
                             settings.max_len, settings.length_penalty, settings.block_ngram, guide)
        probs.append(p)
    return beams, torch.cat(probs) if tags else None


def evaluate(model_dir: str | Path | None, data: str | Path, split: str = "test", beam: int | None = None,
             out: str | Path | None = None, cache: str | Path | None = None, progress: bool = True,
             batch_size: int = 100, length_penalty: float | None = None, block_ngram: int | None = None,
             tag_weight: float | None = None) -> dict:
    """Caption every photo of `split` and score against its human captions; writes report.json and report.html.

    `beam`, `length_penalty`, `block_ngram` and `tag_weight` default to the model's own decoding settings.
    """
    model = load_model(model_dir, fast=True)  # scored exactly as `captioner caption` decodes
    given = {"beam": beam, "length_penalty": length_penalty, "block_ngram": block_ngram, "tag_weight": tag_weight}
    settings = replace(model.decode, **{k: v for k, v in given.items() if v is not None})
    tags = tagger(model, load_encoder(model.encoder, model.input_size)) if settings.tag_weight else None
    photos = load_photos(model, data, split, cache, progress)
    started = time.time()
    beams, _ = decode_split(model, tags, photos, settings, batch_size, progress)
    seconds = time.time() - started
    captions = [[model.vocab.words[t] for t in hyps[0].tokens] for hyps in beams]
    ids = [str(p) for p in photos.paths]
    predictions = {i: " ".join(words) for i, words in zip(ids, captions)}
    metrics = score_captions(predictions, dict(zip(ids, photos.raw)))
    variety = diversity(predictions)
    samples = [{"path": i, "caption": detokenize(words), "references": refs, "score": round(hyps[0].logprob, 4)}
               for i, words, refs, hyps in zip(ids, captions, photos.raw, beams)]
    meta = {"model": str(model_dir or "shipped default"), "corpus": str(data), "split": split,
            **{k: getattr(settings, k) for k in given}, "photos": len(ids),
            "decode_seconds": round(seconds, 2), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads()}
    out = Path(out) if out else Path(model_dir or ".") / f"eval-{split}"
    json_path, html_path = write_report(out, scores=metrics, diversity=variety, samples=samples, meta=meta)
    return {"scores": metrics, "diversity": variety, "json": json_path, "html": html_path, "meta": meta}
