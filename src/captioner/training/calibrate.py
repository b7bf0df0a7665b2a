"""Fit a model's caption confidence on dev sets, and check that it separates good captions from bad ones.

Each dev photo is captioned as `captioner caption` would (the model's decoding
settings); its confidence features are weighed by a logistic regression against
whether its caption's CIDEr-D reaches confidence.GOOD. The check is
cross-fitted: each half of the photos is scored by a regression fitted on the
other half, and for each dev set the mean per-photo CIDEr-D of its least
confident fifth is compared with the rest's. The cross-fitted confidences also
choose the confidence from which captions are said plainly
(confidence.choose_plain), and each dev set reports the share of its captions
said at each level of doubt and their mean CIDEr-D. The regression written into
the model folder is then fitted on all the photos.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CaptionerError
from ..evaluation.metrics import photo_cider
from ..features.splits import model_features
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
    confidence.LOW, the mean per-photo CIDEr-D (x 100) of the least confident
    fifth and of the rest, and the share and mean CIDEr-D of the captions said at
    each level of doubt (all cross-fitted); the plain threshold; the regression's
    weights.
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
        photos = model_features(model, data, "dev", cache, progress, device)
        beams, probs = decode(model.decoder, *photos.decoded, model.decode, tags, progress=progress,
                              tagged=photos.pooled)
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
    per_set = list(zip(predicted.split([len(c) for c in ciders]), ciders))
    fitted = confidence.fit(x, good)
    fitted.plain = confidence.choose_plain([(p, c >= confidence.GOOD) for p, c in per_set])
    report = {name: check(p, c, fitted) for name, (p, c) in zip(names, per_set)}
    meta = {"dev": names, "good": confidence.GOOD, "agree": confidence.AGREE, "check": report}
    confidence.save(model_dir, centres, fitted, meta)
    return {"check": report, "plain": round(fitted.plain, 4),
            "weights": dict(zip(confidence.FEATURES, fitted.weights.tolist()))}


def check(p: torch.Tensor, cider: torch.Tensor, fitted: confidence.Confidence) -> dict:
    """One dev set's photos' confidences p [n] (cross-fitted) against their captions' CIDEr-D [n]: how the
    least confident fifth compares with the rest, and what is said at each level of doubt."""
    low = p <= p.quantile(0.2)
    doubt = torch.tensor([fitted.doubt(float(v)) for v in p])
    levels = {}
    for level, hedge in enumerate(("plain", "probably", "not sure")):
        said = doubt == level
        levels[hedge] = {"share": round(float(said.float().mean()), 3),
                         "cider": round(100 * float(cider[said].mean()), 1) if said.any() else None}
    return {"photos": len(p), "below_low": round(float((p < confidence.LOW).float().mean()), 3),
            "least_confident_fifth_cider": round(100 * float(cider[low].mean()), 1),
            "rest_cider": round(100 * float(cider[~low].mean()), 1), "levels": levels}
