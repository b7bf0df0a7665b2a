"""Evaluation on a split of a prepared corpus, the COCO caption toolkit's way."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..data.text import detokenize
from ..features.splits import model_features
from ..models.decode import decode
from ..models.device import resolve
from ..models.encoders import load_encoder
from ..models.folder import load_model
from ..models.tags import tagger
from .metrics import diversity, score_captions
from .report import write_report


def evaluate(model_dir: str | Path | None, data: str | Path, split: str = "test", beam: int | None = None,
             out: str | Path | None = None, cache: str | Path | None = None, progress: bool = True,
             batch_size: int = 100, length_penalty: float | None = None, block_ngram: int | None = None,
             tag_weight: float | None = None, device: str | torch.device = "auto") -> dict:
    """Caption every photo of `split` and score against its human captions; writes report.json and report.html.

    `beam`, `length_penalty`, `block_ngram` and `tag_weight` default to the model's own decoding settings.
    The photos are encoded (if not cached) and captioned on `device` (see models.device.resolve).
    """
    device = resolve(device)
    model = load_model(model_dir, fast=True, device=device)  # scored exactly as `captioner caption` decodes
    given = {"beam": beam, "length_penalty": length_penalty, "block_ngram": block_ngram, "tag_weight": tag_weight}
    settings = model.decode.override(**given)
    tags = tagger(model, load_encoder(model.encoder, model.input_size, device)) if settings.tag_weight else None
    photos = model_features(model, data, split, cache, progress, device)
    started = time.time()
    beams, _ = decode(model.decoder, *photos.decoded, settings, tags, batch_size, progress, tagged=photos.pooled)
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
            "threads": torch.get_num_threads(), "device": str(device)}
    out = Path(out) if out else Path(model_dir or ".") / f"eval-{split}"
    json_path, html_path = write_report(out, scores=metrics, diversity=variety, samples=samples, meta=meta)
    return {"scores": metrics, "diversity": variety, "json": json_path, "html": html_path, "meta": meta}
