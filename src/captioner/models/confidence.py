"""How sure a caption is: a number in [0, 1], and the words that say so when it is low.

A listener who hears "a man is standing in front of a sign" about a cat is
worse off than one who hears nothing, so every caption carries a confidence:
the chance that it matches what people would say of the photo. It weighs five
things a captioner knows about its own caption (FEATURES) with a logistic
regression fitted on dev sets (`captioner calibrate`), against whether the
caption's per-photo CIDEr-D reaches GOOD:

- `logprob`: the caption's mean log-probability per word, the model's own certainty;
- `tag`: the top tag's probability, how clearly the classifier recognises something;
- `named` and `unnamed`: the probability of the tags whose word the caption says, and of those whose
  word it leaves out (a confident "cat" tag under a caption about a man is a bad sign);
- `familiar`: the cosine between the photo and the nearest of the training photos' centroids;
- `agree`: how many of the best caption's words the beam's other captions share.

A caption is said at one of three levels of doubt (HEDGES): plainly; "probably
..."; or "I am not sure; it may be ..." when its confidence is below LOW (more
likely wrong than right). Calibration chooses the confidence from which a
caption is said plainly on the dev sets: the lowest at which the captions said
plainly are good at least AGREE of the time on every one of them.

The model folder keeps it in confidence.safetensors: the centroids (written by
training), the regression and the plain threshold (written by calibration).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_path
from .search import Hypothesis

FILE = "confidence.safetensors"
FEATURES = ("logprob", "tag", "named", "unnamed", "familiar", "agree")
GOOD = 0.2  # a caption is good when its CIDEr-D against the photo's references reaches this (1.0: 100 in papers)
LOW = 0.5  # below this confidence a caption is said "I am not sure; it may be ..."
AGREE = 0.8  # the captions said plainly are good at least this often on each dev set
MIN_PLAIN = 20  # ... counted over at least this many of its photos
HEDGES = ("{}", "probably {}", "I am not sure; it may be {}")  # by doubt: plain, probably, unsure
CENTROIDS = 256


def centroids(pooled: torch.Tensor, k: int = CENTROIDS, iterations: int = 10, seed: int = 0) -> torch.Tensor:
    """k unit centroids [k, D] of the photos' pooled vectors [N, D] (spherical k-means): where training photos lie."""
    x = torch.nn.functional.normalize(pooled.float(), dim=1)
    k = min(k, len(x))
    centres = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]]
    for _ in range(iterations):
        nearest = (x @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, x)
        centres = torch.where(sums.norm(dim=1, keepdim=True) > 0, torch.nn.functional.normalize(sums, dim=1), centres)
    return centres


def features(beams: list[list[Hypothesis]], pooled: torch.Tensor, centres: torch.Tensor,
             probs: torch.Tensor | None, word_ids: torch.Tensor | None) -> torch.Tensor:
    """FEATURES [B, 6] of each photo's best caption; `probs` [B, C] and `word_ids` [C] (-1: no word) give the
    tags, None when the encoder has no classifier."""
    rows = []
    centres = centres.to(pooled.device).float()
    familiar = (torch.nn.functional.normalize(pooled.float(), dim=1) @ centres.T).max(1).values.tolist()
    for b, hyps in enumerate(beams):
        best = hyps[0]
        words = set(best.tokens)
        tag = named = unnamed = 0.0
        if probs is not None:
            values, classes = probs[b].topk(5)
            tag = float(values[0])
            for p, w in zip(values.tolist(), word_ids[classes].tolist()):
                if w >= 0:
                    named, unnamed = (named + p, unnamed) if w in words else (named, unnamed + p)
        agree = sum(len(words & set(h.tokens)) / max(1, len(words)) for h in hyps[1:]) / max(1, len(hyps) - 1)
        rows.append([best.logprob / (len(best.tokens) + 1), tag, named, unnamed, familiar[b], agree])
    return torch.tensor(rows, device=pooled.device)


@dataclass
class Confidence:
    """The fitted regression: confidence = sigmoid(weights . (features - mean) / std + bias)."""

    weights: torch.Tensor  # [F]
    bias: torch.Tensor  # []
    mean: torch.Tensor  # [F]
    std: torch.Tensor  # [F]
    plain: float = LOW  # from this confidence up a caption is said plainly (LOW: models calibrated before levels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((x - self.mean) / self.std @ self.weights + self.bias)

    def doubt(self, confidence: float) -> int:
        """0: said plainly, 1: "probably ...", 2: "I am not sure; it may be ..." (HEDGES)."""
        return 0 if confidence >= self.plain else 1 if confidence >= LOW else 2


def choose_plain(sets: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The lowest confidence from which the captions said plainly are good at least AGREE of the time (over at
    least MIN_PLAIN photos) in every one of `sets` (confidence [n], good [n] of a dev set each), and never below
    LOW; a set whose captions never get there allows only its single most confident caption."""
    needed = [LOW]
    for p, good in sets:
        order = p.argsort(descending=True)
        share = good[order].float().cumsum(0) / torch.arange(1, len(p) + 1)  # [n]: good among the top k + 1
        enough = (share >= AGREE) & (torch.arange(len(p)) + 1 >= min(MIN_PLAIN, len(p)))
        last = int(enough.nonzero().max()) if enough.any() else 0  # the most photos said plainly and still good
        needed.append(float(p[order[last]]))
    return max(needed)


def fit(x: torch.Tensor, good: torch.Tensor, l2: float = 1e-2, steps: int = 200) -> Confidence:
    """A logistic regression of good [N] (0/1) on features x [N, F], on standardised features."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    weights = torch.zeros(x.shape[1], requires_grad=True, device=x.device)
    bias = torch.zeros((), requires_grad=True, device=x.device)
    opt = torch.optim.LBFGS([weights, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weights + bias, good.float()) \
            + l2 * weights.square().sum()
        value.backward()
        return value

    opt.step(loss)
    return Confidence(weights.detach(), bias.detach(), mean, std)


def save(folder: Path, centres: torch.Tensor, confidence: Confidence | None = None, meta: dict | None = None) -> None:
    """Write FILE: the centroids, and the regression once calibrated (`meta`: how it was fitted, as JSON)."""
    tensors = {"centroids": centres.half().contiguous()}
    if confidence is not None:
        tensors |= {"weights": confidence.weights, "bias": confidence.bias.reshape(1), "mean": confidence.mean,
                    "std": confidence.std, "plain": torch.tensor([confidence.plain])}
    with atomic_path(folder / FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"features": json.dumps(FEATURES), "fit": json.dumps(meta or {})})


def load(folder: Path, device: torch.device | None = None) -> tuple[torch.Tensor | None, Confidence | None]:
    """The centroids and the regression of a model folder, on `device` (None: where read); None for what it
    does not have."""
    path = folder / FILE
    if not path.is_file():
        return None, None
    with safe_open(str(path), "pt") as f:
        if json.loads(f.metadata()["features"]) != list(FEATURES):
            return f.get_tensor("centroids").to(device), None  # fitted on other features: calibrate again
        names = set(f.keys())
        tensors = {name: f.get_tensor(name).float().to(device) for name in names}
    regression = Confidence(tensors["weights"], tensors["bias"][0], tensors["mean"], tensors["std"],
                            float(tensors["plain"][0]) if "plain" in names else LOW) if "weights" in names else None
    return tensors["centroids"], regression


def say(text: str, doubt: int) -> str:
    """The caption as it is shown and read aloud, with its doubt (Confidence.doubt) in words."""
    return HEDGES[doubt].format(text)
