"""Training the photo-text embedding (`captioner align`) and choosing how gallery search uses it.

The two towers (models/embedding.py) are trained together on every train
caption of the corpora given, beside its photo: a symmetric InfoNCE loss with a
learned temperature, plus `hardest` x the VSE++ loss on each batch's hardest
negatives. The epoch is chosen on the dev splits, and so are the search
settings (blend, tag weight, re-ranking, weak score), on the captions the
gallery really stores: the model's own, decoded as `captioner index` decodes them.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..captioning import Captioner
from ..data.corpus import load_prepared
from ..data.text import clean
from ..errors import CaptionerError
from ..features.splits import load_features, model_features
from ..models.device import autocast
from ..models.embedding import Embedding, RetrievalConfig, photo_vectors, save, save_settings, text_logprob
from ..models.sentences import DIM
from ..models.tags import tag_bonus

log = logging.getLogger(__name__)

WEAK_QUANTILE = 0.05  # weak_score: the score below which this share of dev captions rank their own photo
MARGIN = 0.2  # the VSE++ loss's margin
ARTICLES = frozenset({"a", "an", "the"})


@dataclass
class AlignConfig:
    epochs: int = 10  # 10 retrieved better on dev than 6 (BENCHMARKS.md, "The default with a fine-tuned encoder top")
    batch_size: int = 256
    lr: float = 1e-3  # the photo tower's and the text map's
    text_lr: float = 5e-5  # the fine-tuned text layers'
    dropout: float = 0.5  # on the photo tower's input features
    hardest: float = 0.5  # weight of the VSE++ hardest-negative loss beside InfoNCE
    soft: bool = False  # captions worded alike (but for articles) share the target between their photos
    seed: int = 0


@dataclass
class Pairs:
    """Photos (features) and their captions, for training or choosing the embedding."""

    pooled: torch.Tensor  # [n, C] the encoder's own features
    grid: torch.Tensor  # [n, N, C]
    captions: list[list[str]]
    name: str = ""
    tuned: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # the decoder's, if its own
    states: torch.Tensor = field(default=None, repr=False)  # [m, T, 384] float16: each caption after the frozen layers
    keep: torch.Tensor = field(default=None, repr=False)  # [m, T]
    owner: torch.Tensor = field(init=False, repr=False)  # [m]: the photo of each caption

    def __post_init__(self) -> None:
        self.owner = torch.repeat_interleave(torch.arange(len(self.captions)),
                                             torch.tensor([len(g) for g in self.captions]))

    def seen(self, cfg: RetrievalConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """What the photo tower reads: the encoder's own (pooled, grid), or with `cfg.tuned` the decoder's (its
        fine-tuned top's, where the model has one)."""
        return self.tuned if cfg.tuned and self.tuned is not None else (self.pooled, self.grid)

    def encode_text(self, embedding: Embedding, progress: bool) -> None:
        """Run every caption through the frozen layers once, on the embedding's device (training then runs only
        the tuned ones); the states are kept on the host."""
        flat = [c for group in self.captions for c in group]
        batches = list(embedding.base.batches(flat, 256))
        longest = max(ids.shape[1] for _, ids, _ in batches)
        self.states = torch.zeros(len(flat), longest, DIM, dtype=torch.float16)
        self.keep = torch.zeros(len(flat), longest, dtype=torch.long)
        for rows, ids, keep in tqdm(batches, desc=f"text {self.name}", unit="batch", disable=not progress):
            self.states[rows, :ids.shape[1]] = embedding.text_states(ids, keep).half().cpu()
            self.keep[rows, :ids.shape[1]] = keep

    def text_batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States [B, T, 384] and keep [B, T] of captions `rows`, cut to their longest."""
        keep = self.keep[rows]
        length = int(keep.sum(1).max())
        return self.states[rows, :length].float(), keep[:, :length]


def contrastive_loss(embedding: Embedding, t: torch.Tensor, v: torch.Tensor, photo: torch.Tensor,
                     hardest: float, wording: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching text [B, 384] and image [B, 384] vectors (+ VSE++ hardest).

    photo [B] names each pair's photo: another caption of the same photo is no negative, it is left out.
    wording [B] (optional) names each caption's words but for articles: captions worded alike describe each
    other's photos as well as their own, so the target is shared evenly between them (soft targets), and
    neither is the other's negative.
    """
    sims = t @ v.T  # [B, B]: row i's match is column i
    own = torch.eye(len(t), dtype=torch.bool, device=t.device)
    twin = (photo[:, None] == photo[None, :]) & ~own
    alike = own if wording is None else (wording[:, None] == wording[None, :]) & ~twin  # symmetric, own in it
    target = alike.float() / alike.sum(1, keepdim=True)  # [B, B]: rows (and so columns) sum to 1
    logits = embedding.log_scale.exp().clamp(max=100) * sims
    loss = sum(-(target * F.log_softmax(x.masked_fill(twin, -math.inf), 1).masked_fill(twin, 0)).sum(1).mean()
               for x in (logits, logits.T)) / 2
    if hardest:
        positive = sims.diag()
        negatives = sims.masked_fill(twin | alike, -2.0)
        loss = loss + hardest * (F.relu(MARGIN + negatives.max(1).values - positive)
                                 + F.relu(MARGIN + negatives.max(0).values - positive)).mean()
    return loss


@torch.no_grad()
def dev_scores(embedding: Embedding, pairs: Pairs, batch_size: int = 512) -> np.ndarray:
    """[captions, photos] text-to-image similarity on a dev set (captions encoded through the frozen layers)."""
    embedding.eval()
    images = torch.from_numpy(embedding.images(*pairs.seen(embedding.cfg), batch_size))
    texts = torch.cat([embedding.text_from(*pairs.text_batch(torch.arange(i, min(i + batch_size, len(pairs.owner)))))
                       for i in range(0, len(pairs.owner), batch_size)])
    return (texts.cpu() @ images.T).numpy()


def train_embedding(train: list[Pairs], dev: list[Pairs], cfg: RetrievalConfig, tc: AlignConfig,
                    progress: bool = True, device: torch.device | None = None) -> tuple[Embedding, list[dict]]:
    """Train on the captions of `train`, each once an epoch beside its photo, and keep the epoch with the
    best mean dev R@1 + R@5 + R@10. Returns the embedding and each epoch's dev recall. The embedding trains on
    `device` (None: the host); the features and caption states stay on the host, each batch moves."""
    torch.manual_seed(tc.seed)
    g = torch.Generator().manual_seed(tc.seed)
    pooled = torch.cat([p.seen(cfg)[0] for p in train])
    grid = torch.cat([p.seen(cfg)[1] for p in train])
    embedding = Embedding(cfg, pooled.shape[1], grid.shape[1], tc.dropout).to(device)
    embedding.text_top.load_state_dict(embedding.base.layers[embedding.frozen:].state_dict())
    x = pooled.float()
    embedding.photo.mean.copy_(x.mean(0))
    embedding.photo.std.copy_(x.std(0) + 1e-6)
    for p in train + dev:
        p.encode_text(embedding, progress)
    source = torch.cat([torch.full((len(p.owner),), k) for k, p in enumerate(train)])  # each caption's Pairs
    row = torch.cat([torch.arange(len(p.owner)) for p in train])  # its row there
    offsets = torch.cumsum(torch.tensor([0] + [len(p.captions) for p in train[:-1]]), 0)
    photo = torch.cat([p.owner + offsets[k] for k, p in enumerate(train)])  # its photo in pooled and grid
    wording = wordings([c for p in train for group in p.captions for c in group]) if tc.soft else None
    text_params = list(embedding.text_top.parameters())
    others = [p for n, p in embedding.named_parameters() if not n.startswith("text_top.")]
    opt = torch.optim.AdamW([{"params": others, "lr": tc.lr}, {"params": text_params, "lr": tc.text_lr}],
                            weight_decay=0.05)
    n = len(photo)
    per_epoch = max(1, n // tc.batch_size)  # full batches only: a small last batch is too easy a contrast
    steps = tc.epochs * per_epoch
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(s / steps, 1.0)))))  # a linear warm-up, then a cosine down to zero
    history, best, best_state = [], -1.0, None
    for epoch in range(1, tc.epochs + 1):
        embedding.train()
        perm = torch.randperm(n, generator=g)
        losses = []
        for b in tqdm(range(per_epoch), desc=f"embedding epoch {epoch}/{tc.epochs}", unit="batch",
                      disable=not progress, leave=False):
            idx = perm[b * tc.batch_size:(b + 1) * tc.batch_size]
            states, keep = _text_rows(train, source[idx], row[idx])
            batch = photo[idx]
            with autocast(embedding.device, enabled=embedding.base.bf16):
                t = embedding.text_from(states, keep)
                v = embedding.photo(pooled[batch].to(embedding.device), grid[batch].to(embedding.device))
            loss = contrastive_loss(embedding, t.float(), v.float(), batch.to(embedding.device), tc.hardest,
                                    None if wording is None else wording[idx].to(embedding.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        record = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4),
                  "temperature": round(1 / embedding.log_scale.exp().item(), 4)}
        for p in dev:
            record[p.name] = recall(dev_scores(embedding, p), p.owner.numpy())
        score = float(np.mean([_rsum(record[p.name]) for p in dev])) if dev else epoch
        history.append(record)
        log.info(json.dumps(record))
        if score > best:
            best, best_state = score, copy.deepcopy(embedding.state_dict())
    embedding.load_state_dict(best_state)
    return embedding.eval(), history


def wordings(captions: list[str]) -> torch.Tensor:
    """[len(captions)]: the same number for captions of the same words but for articles ("A dog runs." and "the
    dog runs"), a different one otherwise."""
    ids: dict[tuple[str, ...], int] = {}
    return torch.tensor([ids.setdefault(tuple(w for w in clean(c) if w not in ARTICLES), len(ids))
                         for c in captions])


def _text_rows(train: list[Pairs], source: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States and keep of caption `rows` of the Pairs `source` names, padded alike."""
    parts = [train[int(k)].text_batch(rows[source == k]) for k in source.unique()]
    order = torch.cat([torch.nonzero(source == k)[:, 0] for k in source.unique()])
    length = max(s.shape[1] for s, _ in parts)
    states = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s, _ in parts])
    keep = torch.cat([F.pad(k, (0, length - k.shape[1])) for _, k in parts])
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    return states[back], keep[back]


def recall(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (%) and median rank of queries [q, n] scores whose right photo is truth [q]."""
    ranks = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(1)
    return {"R@1": round(100 * float((ranks < 1).mean()), 2), "R@5": round(100 * float((ranks < 5).mean()), 2),
            "R@10": round(100 * float((ranks < 10).mean()), 2), "median_rank": float(np.median(ranks) + 1)}


def reranked(first: np.ndarray, pool: np.ndarray, logprob: np.ndarray, weight: float) -> np.ndarray:
    """First-stage scores [q, n] with each query's pool [q, P] re-scored by `weight` * logprob [q, P]."""
    out = np.full_like(first, -np.inf)
    rows = np.arange(len(first))[:, None]
    out[rows, pool] = first[rows, pool] + weight * logprob
    return out


def tune(captioner, embedding: Embedding, dev: list[Pairs], rerank: bool = True, progress: bool = True) -> list[dict]:
    """Choose blend, tag weight, then the re-ranking pool and weight, by the mean over `dev` of R@1 + R@5 + R@10,
    and the weak score; sets them on the embedding. Returns every setting tried with its recall, for the record."""
    model, cfg = captioner.model, embedding.cfg
    sets = []
    for p in dev:
        captions = captioner.describe(p.pooled, p.grid, tuned=p.tuned)  # as the gallery stores them
        photos = photo_vectors(embedding, embedding.images(*p.seen(cfg)), [c.beam_texts for c in captions])
        queries = [c for group in p.captions for c in group]
        tags = [[asdict(t) for t in c.tags] for c in captions]
        named = np.array([[tag_bonus(set(clean(q)), photo, 1.0) for photo in tags] for q in queries])  # [q, n]
        sets.append((p, photos, queries, embedding.text(queries), named))
    trials = []

    def first_stage(blend: float, tag_weight: float) -> list[np.ndarray]:
        return [np.concatenate([(1 - blend) * t, blend * t], 1) @ photos.T + tag_weight * named
                for _, photos, _, t, named in sets]

    def scored(blend: float, tag_weight: float, pool: int = 0, weight: float = 0.0, firsts=None) -> dict:
        firsts = firsts or first_stage(blend, tag_weight)
        if pool:
            firsts = [reranked(f, c[:, :pool], lp[:, :pool], weight) for f, (c, lp) in zip(firsts, likelihoods)]
        return {"blend": blend, "tag_weight": tag_weight, "rerank_pool": pool, "rerank_weight": weight} | \
            _mean_recall([(f, p.owner.numpy()) for f, (p, *_) in zip(firsts, sets)])

    for blend in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        trials.append(scored(blend, 0.0))
    cfg.blend = max(trials, key=_rsum)["blend"]
    for tag_weight in (0.05, 0.1, 0.2, 0.5):
        trials.append(scored(cfg.blend, tag_weight))
    cfg.tag_weight = max((t for t in trials if t["blend"] == cfg.blend), key=_rsum)["tag_weight"]
    vectors_only = first_stage(cfg.blend, 0.0)
    own = np.concatenate([f[np.arange(len(f)), p.owner.numpy()] for f, (p, *_) in zip(vectors_only, sets)])
    cfg.weak_score = round(float(np.quantile(own, WEAK_QUANTILE)), 4)
    if not rerank:
        return trials
    pools = (30, 50, 100)
    firsts = first_stage(cfg.blend, cfg.tag_weight)
    likelihoods = []
    for first, (p, _, queries, *_) in zip(firsts, sets):
        candidates = np.argsort(-first, 1)[:, :max(pools)]
        pooled, grid = p.tuned if p.tuned is not None else (p.pooled, p.grid)  # what the decoder reads
        logprob = np.stack([text_logprob(model, pooled[c], grid[c], q)
                            for q, c in tqdm(list(zip(queries, candidates)), desc=f"likelihood {p.name}",
                                             unit="query", disable=not progress)])
        likelihoods.append((candidates, logprob))
    for size in pools:
        for weight in (0.01, 0.02, 0.05, 0.1, 0.2):
            trials.append(scored(cfg.blend, cfg.tag_weight, size, weight, firsts))
    cfg.rerank_pool, cfg.rerank_weight = choose_rerank(trials)
    return trials


def _mean_recall(scored: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    each = [recall(scores, truth) for scores, truth in scored]
    return {k: round(float(np.mean([r[k] for r in each])), 2) for k in each[0]}


def choose_rerank(trials: list[dict], slack: float = 1.0) -> tuple[int, float]:
    """The smallest pool within `slack` points of the best R@1 + R@5 + R@10, and its best weight.

    Each candidate costs an encoding of its photo, so a pool three times larger
    must earn more than noise to be chosen.
    """
    reranked = [t for t in trials if t["rerank_pool"]]
    best = max(map(_rsum, reranked))
    pool = min(t["rerank_pool"] for t in reranked if _rsum(t) >= best - slack)
    chosen = max((t for t in reranked if t["rerank_pool"] == pool), key=_rsum)
    return chosen["rerank_pool"], chosen["rerank_weight"]


def _rsum(trial: dict) -> float:
    return trial["R@1"] + trial["R@5"] + trial["R@10"]


def load_pairs(model, data: list[str | Path], split: str, cache: str | Path | None,
               progress: bool, device: torch.device | str = "auto", decoded: bool = False) -> list[Pairs]:
    """The photos of `split` in each prepared corpus that has any, with their features (encoded on `device` if
    not cached) and captions; `decoded`: with what the model's decoder reads too, where that is a fine-tuned
    top's (Pairs.tuned), to caption them."""
    out = []
    for folder in data:
        if any(im["split"] == split for im in load_prepared(folder).images):
            s = model_features(model, folder, split, cache, progress, device) if decoded else \
                load_features(folder, model.encoder, model.input_size, split, cache, progress, device)
            out.append(Pairs(s.pooled, s.grid, s.raw, f"{Path(folder).name} {split}", s.tuned))
    return out


def align(model_dir: str | Path, data: list[str | Path], cache: str | Path | None = None,
          cfg: RetrievalConfig | None = None, tc: AlignConfig | None = None, rerank: bool = True,
          progress: bool = True, device: str | torch.device = "auto") -> dict:
    """Train the model's embedding on the train splits of `data`, choose it and tune search on their dev
    splits, save it beside the model; on `device` (see models.device.resolve)."""
    captioner = Captioner.load(model_dir, device=device)
    model = captioner.model
    # A fine-tuned top's features serve search better than the encoder's own (BENCHMARKS.md, "Teach the encoder")
    cfg, tc = cfg or RetrievalConfig(tuned=model.top is not None), tc or AlignConfig()
    train = load_pairs(model, data, "train", cache, progress, captioner.device, decoded=cfg.tuned)
    dev = load_pairs(model, data, "dev", cache, progress, captioner.device, decoded=True)
    if not train or not dev:
        raise CaptionerError("align needs a corpus with a train split and one with a dev split")
    embedding, history = train_embedding(train, dev, cfg, tc, progress, captioner.device)
    trials = tune(captioner, embedding, dev, rerank, progress)
    record = {"train": {p.name: len(p.captions) for p in train}, "train_config": asdict(tc), "epochs": history}
    save(Path(model_dir), embedding, record)
    return {"config": asdict(embedding.cfg), "train_config": asdict(tc), "epochs": history, "dev_trials": trials}


def retune(model_dir: str | Path, data: list[str | Path], cache: str | Path | None = None, rerank: bool = True,
           progress: bool = True, device: str | torch.device = "auto") -> dict:
    """Choose the search settings of the model's trained embedding again on the dev splits of `data`, its towers
    unchanged (after the captioner's decoding changed, say); saves them if they changed, on `device`. Returns the
    settings before and after, and every trial."""
    captioner = Captioner.load(model_dir, device=device)
    embedding = captioner.embedding
    if embedding is None:
        raise CaptionerError(f"{model_dir} has no search embedding to tune: train one with `captioner align "
                             f"--model {model_dir}`")
    dev = load_pairs(captioner.model, data, "dev", cache, progress, captioner.device, decoded=True)
    if not dev:
        raise CaptionerError("retuning needs a corpus with a dev split")
    before = asdict(embedding.cfg)
    trials = tune(captioner, embedding, dev, rerank, progress)
    if asdict(embedding.cfg) != before:
        save_settings(Path(model_dir), embedding.cfg)
    return {"before": before, "config": asdict(embedding.cfg), "dev_trials": trials}
