"""How photos and descriptions become comparable: the vectors and scores behind gallery search.

A photo gets two vectors in the sentence space (`sentences.py`, 384 numbers):
its caption vector (the mean of its beam captions' sentence vectors) and, with
a retrieval head, a text-aligned image vector (the encoder's pooled vector
mapped by a small network trained so a photo lands near its human captions).
A description is scored against a photo as

    (1 - blend) * q . caption_vector + blend * head_text(q) . aligned_image_vector

which is one inner product of two concatenated vectors, so a plain vector index
ranks by it exactly. The best candidates can then be re-ranked by adding
`rerank_weight * log p(description | photo)` under the captioner itself.

The head is trained on the train split and `blend` and `rerank_weight` are
chosen on the dev split (`captioner align`); it is stored in the model folder
as retrieval.safetensors. A model without one searches by caption vectors alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from .decode import beam_search, caption_logprob
from .files import atomic_path
from .sentences import DIM, load_sentence_encoder
from .text import clean, detokenize

FILE = "retrieval.safetensors"


@dataclass
class RetrievalConfig:
    hidden: int = 1024  # width of the head's hidden layer
    blend: float = 0.7  # weight of the text-aligned image vector against the caption vector
    rerank_weight: float = 0.05  # weight of log p(description | photo) when re-ranking
    rerank_pool: int = 30  # candidates re-ranked per query


class RetrievalHead(nn.Module):
    """Maps pooled image vectors [B, D] and sentence vectors [B, 384] into one space of unit vectors."""

    def __init__(self, cfg: RetrievalConfig, feature_dim: int):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.image_net = nn.Sequential(nn.Linear(feature_dim, cfg.hidden), nn.GELU(), nn.Dropout(0.2),
                                       nn.Linear(cfg.hidden, DIM))
        self.text_net = nn.Linear(DIM, DIM)  # a residual correction, zero at the start
        nn.init.zeros_(self.text_net.weight)
        nn.init.zeros_(self.text_net.bias)
        self.log_scale = nn.Parameter(torch.tensor(3.0))  # contrastive temperature, learned

    def image(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_net((pooled.float() - self.mean) / self.std), dim=-1)

    def text(self, sentences: torch.Tensor) -> torch.Tensor:
        return F.normalize(sentences + self.text_net(sentences), dim=-1)


def load_head(model_dir: Path) -> RetrievalHead | None:
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        cfg = RetrievalConfig(**json.loads(f.metadata()["config"]))
        weights = {k: f.get_tensor(k) for k in f.keys()}
    head = RetrievalHead(cfg, weights["mean"].shape[0])
    head.load_state_dict({k: v.float() for k, v in weights.items()})
    return head.eval()


def save_head(model_dir: Path, head: RetrievalHead) -> None:
    state = {k: v.detach().half().contiguous() if v.dtype == torch.float32 and k not in ("mean", "std")
             else v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(Path(model_dir) / FILE) as tmp:
        save_file(state, str(tmp), metadata={"config": json.dumps(asdict(head.cfg))})


def caption_vectors(captions: list[list[str]]) -> np.ndarray:
    """[n, 384]: per photo, the normalised mean of its captions' sentence vectors (best caption first)."""
    flat = [c for group in captions for c in group]
    vectors = load_sentence_encoder().embed(flat)
    out, i = np.zeros((len(captions), DIM), np.float32), 0
    for row, group in enumerate(captions):
        mean = vectors[i:i + len(group)].mean(0)
        out[row] = mean / max(float(np.linalg.norm(mean)), 1e-8)
        i += len(group)
    return out


@torch.inference_mode()
def photo_vectors(head: RetrievalHead | None, pooled: torch.Tensor, captions: list[list[str]]) -> np.ndarray:
    """[n, 384] caption vectors, or [n, 768] caption vectors beside text-aligned image vectors."""
    text = caption_vectors(captions)
    if head is None:
        return text
    return np.concatenate([text, head.image(pooled).numpy()], 1)


@torch.inference_mode()
def query_vectors(head: RetrievalHead | None, sentences: np.ndarray, blend: float | None = None) -> np.ndarray:
    """Descriptions' sentence vectors [n, 384] made comparable with `photo_vectors` by inner product."""
    if head is None:
        return sentences
    blend = head.cfg.blend if blend is None else blend
    return np.concatenate([(1 - blend) * sentences, blend * head.text(torch.from_numpy(sentences)).numpy()], 1)


def text_logprob(model, pooled: torch.Tensor, grid: torch.Tensor, text: str) -> np.ndarray:
    """[B] log p(text | photo) under the captioner, for each of B photos."""
    ids = model.vocab.encode(clean(text), model.decode.max_len)
    return caption_logprob(model.decoder, pooled, grid, ids).numpy()


def beam_captions(model, pooled: torch.Tensor, grid: torch.Tensor, batch_size: int = 64) -> list[list[str]]:
    """The beam's captions of cached features, best first (what indexing a photo stores)."""
    out = []
    for i in range(0, len(pooled), batch_size):
        for beams in beam_search(model.decoder, pooled[i:i + batch_size], grid[i:i + batch_size],
                                 model.decode.beam, model.decode.max_len, model.decode.length_penalty,
                                 model.decode.block_ngram):
            out.append([detokenize(model.vocab.words[t] for t in h.tokens) for h in beams])
    return out


def train_head(pooled: torch.Tensor, sentences: torch.Tensor, cfg: RetrievalConfig, epochs: int = 60,
               batch_size: int = 256, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> RetrievalHead:
    """Contrastive training: photo i [n, D] against its captions' sentence vectors [n, C, 384].

    Each batch holds distinct photos with one of their captions drawn at random,
    so no other photo's caption in the batch is a hidden positive.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = RetrievalHead(cfg, pooled.shape[1])
    x = pooled.float()
    head.mean.copy_(x.mean(0))
    head.std.copy_(x.std(0) + 1e-6)
    opt = torch.optim.AdamW(head.parameters(), lr, weight_decay=0.1)
    n = len(x)
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    head.train()
    for _ in tqdm(range(epochs), desc="retrieval head", unit="epoch", disable=not progress):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            pick = torch.randint(0, sentences.shape[1], (len(idx),), generator=g)
            logits = head.log_scale.exp() * head.text(sentences[idx, pick]) @ head.image(x[idx]).T
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def recall(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (%) and median rank of queries [q, n] scores whose right photo is truth [q]."""
    ranks = (scores > scores[np.arange(len(truth)), truth][:, None]).sum(1)
    return {"R@1": 100 * float((ranks < 1).mean()), "R@5": 100 * float((ranks < 5).mean()),
            "R@10": 100 * float((ranks < 10).mean()), "median_rank": float(np.median(ranks) + 1)}


def reranked(first: np.ndarray, pool: np.ndarray, logprob: np.ndarray, weight: float) -> np.ndarray:
    """First-stage scores [q, n] with each query's pool [q, P] re-scored by `weight` * logprob [q, P]."""
    out = np.full_like(first, -np.inf)
    rows = np.arange(len(first))[:, None]
    out[rows, pool] = first[rows, pool] + weight * logprob
    return out


def tune(model, head: RetrievalHead, pooled: torch.Tensor, grid: torch.Tensor, queries: list[str],
         truth: np.ndarray, progress: bool = True) -> list[dict]:
    """Choose blend, then the re-ranking pool and weight, by dev-split R@1 + R@5 + R@10; sets them on the head.

    Returns every setting tried with its recall, for the record.
    """
    cfg = head.cfg
    photos = photo_vectors(head, pooled, beam_captions(model, pooled, grid))
    sentences = load_sentence_encoder().embed(queries)
    trials = []
    for blend in (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
        first = query_vectors(head, sentences, blend) @ photos.T
        trials.append({"blend": blend, "rerank_pool": 0, "rerank_weight": 0.0} | recall(first, truth))
    cfg.blend = max(trials, key=_rsum)["blend"]
    first = query_vectors(head, sentences) @ photos.T
    pools = (30, 50, 100)
    pool = np.argsort(-first, 1)[:, :max(pools)]
    logprob = np.stack([text_logprob(model, pooled[p], grid[p], q)
                        for q, p in tqdm(list(zip(queries, pool)), desc="likelihood", unit="query",
                                         disable=not progress)])
    for size in pools:
        for weight in (0.01, 0.02, 0.05, 0.1, 0.2):
            trials.append({"blend": cfg.blend, "rerank_pool": size, "rerank_weight": weight}
                          | recall(reranked(first, pool[:, :size], logprob[:, :size], weight), truth))
    cfg.rerank_pool, cfg.rerank_weight = choose_rerank(trials)
    return trials


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


def align(model_dir: str | Path, data: str | Path, cache: str | Path | None = None, progress: bool = True) -> dict:
    """Train the model's retrieval head on the corpus' train split, tune it on dev, save it beside the model."""
    from .corpus import load_prepared
    from .dataset import ensure_features, load_split
    from .modelfolder import load_model

    model = load_model(model_dir, fast=True)
    prepared = load_prepared(data)
    features, hashes = ensure_features(prepared, model.encoder, model.input_size,
                                       cache or Path(data) / "features", ("train", "dev"), progress)
    train, dev = (load_split(prepared, features, hashes, s) for s in ("train", "dev"))
    encoder = load_sentence_encoder()
    per_photo = min(len(r) for r in train.raw)
    sentences = torch.from_numpy(encoder.embed([c for raw in train.raw for c in raw[:per_photo]]))
    head = train_head(train.pooled, sentences.view(len(train.raw), per_photo, DIM), RetrievalConfig(),
                      progress=progress)
    queries = [c for raw in dev.raw for c in raw]
    truth = np.repeat(np.arange(len(dev.raw)), [len(raw) for raw in dev.raw])
    trials = tune(model, head, dev.pooled, dev.grid, queries, truth, progress)
    save_head(Path(model_dir), head)
    return {"config": asdict(head.cfg), "dev_trials": trials}
