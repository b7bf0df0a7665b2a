"""Fit a model's caption confidence on dev sets, and check that it separates good captions from bad ones.

Each dev photo is captioned as `captioner caption` would (the model's decoding
settings); its confidence features are weighed by a logistic regression against
whether its caption's CIDEr-D reaches confidence.GOOD. The check is
cross-fitted: each half of the photos is scored by a regression fitted on the
other half, and for each dev set the mean per-photo CIDEr-D of its least
confident fifth is compared with the rest's. The regression written into the
model folder is then fitted on all the photos.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CaptionerError
from ..evaluation.metrics import photo_cider
from ..features.splits import load_features
from ..models import confidence
from ..models.decode import decode
from ..models.device import resolve
from ..models.encoders import load_encoder
from ..models.folder import load_model
from ..models.tags import tagger


def calibrate(model_dir: str | Path, datasets: list[str | Path], cache: str | Path | None = None,
              progress: bool = True, device: str | torch.device = "auto") -> dict:
    """Fit and save the confidence of the model in `model_dir` on the dev splits of `datasets`, captioning them
    on `device` (see models.device.resolve; the regression itself is fitted on the host).

    Returns, per dev set, the photos, the share whose confidence is below
    confidence.LOW, and the mean per-photo CIDEr-D (x 100) of the least
    confident fifth and of the rest (cross-fitted), and the regression's weights.
    """
    model_dir, device = Path(model_dir), resolve(device)
    model = load_model(model_dir, fast=True, device=device)
    centres, _ = confidence.load(model_dir)
    if centres is None:
        raise CaptionerError(f"{model_dir} has no {confidence.FILE} with its training photos' centroids: "
                             "retrain it with this version of captioner")
    tags = tagger(model, load_encoder(model.encoder, model.input_size, device))
    names, xs, ciders = [], [], []
    for data in datasets:
        photos = load_features(data, model.encoder, model.input_size, "dev", cache, progress, device)
        beams, probs = decode(model.decoder, photos.pooled, photos.grid, model.decode, tags, progress=progress)
        captions = [model.vocab.decode(hyps[0].tokens) for hyps in beams]
        names.append(Path(data).name)
        xs.append(confidence.features(beams, photos.pooled, centres, probs, tags.word_ids if tags else None))
        ciders.append(torch.from_numpy(photo_cider(captions, photos.references)))
    x, cider = torch.cat(xs), torch.cat(ciders)
    good = cider >= confidence.GOOD
    half = torch.cat([torch.arange(len(c)) % 2 for c in ciders])  # each dev set split alike
    predicted = torch.empty(len(x))
    for h in (0, 1):
        predicted[half == h] = confidence.fit(x[half != h], good[half != h])(x[half == h])
    fitted = confidence.fit(x, good)
    report, start = {}, 0
    for name, c in zip(names, ciders):
        p = predicted[start:start + len(c)]
        start += len(c)
        low = p <= p.quantile(0.2)
        report[name] = {"photos": len(c), "below_low": round(float((p < confidence.LOW).float().mean()), 3),
                        "least_confident_fifth_cider": round(100 * float(c[low].mean()), 1),
                        "rest_cider": round(100 * float(c[~low].mean()), 1)}
    meta = {"dev": names, "good": confidence.GOOD, "check": report}
    confidence.save(model_dir, centres, fitted, meta)
    return {"check": report, "weights": dict(zip(confidence.FEATURES, fitted.weights.tolist()))}
