"""How photos and descriptions become comparable: the trained photo-text embedding behind gallery search.

Two towers map into one space of unit vectors (384 numbers):

- the photo tower: the encoder's grid of cells [N, C] and pooled vector [C];
  the pooled vector's projection asks, by multi-head attention, which cells
  matter, and the answer is mapped into the space;
- the text tower: all-MiniLM-L6-v2 (`sentences.py`) with its top
  `text_layers` layers fine-tuned and a linear map after its mean pooling.

They are trained together by `captioner align` (training/align.py), which
also chooses the search settings below on dev splits.

A gallery photo has two vectors in that space: its caption vector (the mean of
its beam captions' text vectors) and its image vector (the photo tower's). A
description q, with text vector t(q), scores

    (1 - blend) * t(q) . caption_vector + blend * t(q) . image_vector

which is one inner product of two concatenated vectors, so a plain vector index
ranks by it exactly (the gallery adds `tag_weight` x the probability of each of
the photo's tags that q names). The best candidates can then be re-ranked by adding
`rerank_weight * log p(description | photo)` under the captioner itself. A
best match scoring below `weak_score` (what only the worst 5% of dev captions
score with their own photo) matches nothing well.

Stored in the model folder as retrieval.safetensors (the photo tower, the
fine-tuned layers and the map; the rest of the text tower is the installed
all-MiniLM-L6-v2) and search.json (the search settings). The settings act at
query time only, so choosing them again (`captioner align --retune`) rewrites
search.json alone and every gallery indexed with the towers stays valid. A model
without an embedding searches by caption vectors alone.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..data.text import clean
from ..files import atomic_path, write_atomic
from .search import caption_logprob
from .sentences import DIM, SentenceEncoder, config, load_sentence_encoder, mean_pool, new_layers, run_layers

log = logging.getLogger(__name__)

FILE = "retrieval.safetensors"
SETTINGS_FILE = "search.json"
FORMAT = 2  # 1 (no format in the file): a head over the pooled vector beside frozen sentence vectors


@dataclass
class RetrievalConfig:
    width: int = 256  # the photo tower's attention width
    heads: int = 4  # its attention heads
    text_layers: int = 1  # top layers of all-MiniLM-L6-v2 fine-tuned
    tuned: bool = False  # the photo tower reads the decoder's features (a fine-tuned top's), not the encoder's
    blend: float = 0.7  # weight of the image vector against the caption vector
    tag_weight: float = 0.5  # a query word naming a photo's tag adds this x the tag's probability
    rerank_weight: float = 0.05  # weight of log p(description | photo) when re-ranking
    rerank_pool: int = 30  # candidates re-ranked per query
    weak_score: float = 0.0  # a best match below this score matches nothing well


SETTINGS = ("blend", "tag_weight", "rerank_weight", "rerank_pool", "weak_score")
"""RetrievalConfig's search settings (in search.json); the rest is the towers' shape (in retrieval.safetensors)."""


class PhotoTower(nn.Module):
    """pooled [B, C] and grid [B, N, C] -> [B, 384] unit vectors, by attention pooling over the grid."""

    def __init__(self, cfg: RetrievalConfig, feature_dim: int, cells: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.cells = nn.Linear(feature_dim, cfg.width)
        self.position = nn.Parameter(torch.zeros(cells, cfg.width))
        self.query = nn.Linear(feature_dim, cfg.width)
        self.attention = nn.MultiheadAttention(cfg.width, cfg.heads, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.width), nn.GELU(),
                                 nn.Linear(cfg.width, DIM))

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        cells = self.cells(self.drop((grid.float() - self.mean) / self.std)) + self.position  # [B, N, W]
        q = self.query(self.drop((pooled.float() - self.mean) / self.std))[:, None]  # [B, 1, W]
        y = q + self.attention(q, cells, cells, need_weights=False)[0]  # [B, 1, W]
        return F.normalize(self.out(y[:, 0]), dim=-1)


class Embedding(nn.Module):
    """The photo tower and the text tower, and the search settings chosen for them on dev."""

    def __init__(self, cfg: RetrievalConfig, feature_dim: int, cells: int, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.photo = PhotoTower(cfg, feature_dim, cells, dropout)
        self.text_top = new_layers(cfg.text_layers)
        self.frozen = config()["num_hidden_layers"] - cfg.text_layers
        self.text_map = nn.Linear(DIM, DIM)
        nn.init.eye_(self.text_map.weight)
        nn.init.zeros_(self.text_map.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # contrastive temperature, learned

    @property
    def device(self) -> torch.device:
        return self.log_scale.device

    @property
    def base(self) -> SentenceEncoder:
        """all-MiniLM-L6-v2 as installed (shared and frozen) on this embedding's device: its bottom layers are the
        text tower's."""
        return load_sentence_encoder(self.device)

    @torch.inference_mode()
    def images(self, pooled: torch.Tensor, grid: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """pooled [n, C] and grid [n, N, C] (on any device: each batch moves to the embedding's) -> [n, 384]
        float32 unit vectors."""
        batches = range(0, len(pooled), batch_size)
        return torch.cat([self.photo(pooled[i:i + batch_size].to(self.device), grid[i:i + batch_size].to(self.device))
                          for i in batches]).cpu().numpy()

    def text_states(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """[B, T, 384] token vectors after the frozen layers (no gradient)."""
        with torch.no_grad():
            return self.base.tokens(ids, keep, self.frozen)

    def text_from(self, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Token vectors after the frozen layers [B, T, 384] (on any device) -> [B, 384] unit vectors on the
        embedding's device."""
        states, keep = states.to(self.device), keep.to(self.device)
        x = run_layers(self.text_top, states, keep, self.base.bf16)
        return F.normalize(self.text_map(mean_pool(x, keep)), dim=-1)

    @torch.inference_mode()
    def text(self, texts: list[str]) -> np.ndarray:
        """[len(texts), 384] float32 unit vectors."""
        out = np.zeros((len(texts), DIM), np.float32)
        for rows, ids, keep in self.base.batches(texts):
            out[rows] = self.text_from(self.text_states(ids, keep), keep).cpu().numpy()
        return out


def load(model_dir: Path | None, device: torch.device | None = None) -> Embedding | None:
    """The model's embedding on `device` (None: where read), or None when it has none (or one an older captioner
    trained: warned)."""
    path = Path(model_dir or ".") / FILE
    if model_dir is None or not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if int(meta.get("format", "1")) != FORMAT:
            log.warning(f"{path} was trained by an older captioner and is not used: search by caption vectors "
                        f"only until `captioner align --model {model_dir}` trains it again")
            return None
        weights = {k: f.get_tensor(k).float() for k in f.keys()}
    settings = path.with_name(SETTINGS_FILE)  # older folders kept the settings in the towers' file
    cfg = json.loads(meta["config"]) | (json.loads(settings.read_text()) if settings.is_file() else {})
    embedding = Embedding(RetrievalConfig(**cfg), weights["photo.mean"].shape[0], weights["photo.position"].shape[0])
    embedding.load_state_dict(weights)
    return embedding.to(device).eval()


def record(model_dir: str | Path) -> dict:
    """How the model's embedding was trained, as `save` recorded it."""
    with safe_open(str(Path(model_dir) / FILE), "pt") as f:
        return json.loads((f.metadata() or {}).get("record", "{}"))


def save(model_dir: Path, embedding: Embedding, record: dict | None = None) -> None:
    """The towers (with their shape and how they were trained) and the search settings, beside the model."""
    state = {k: v.detach().half().contiguous() if k not in ("photo.mean", "photo.std") else v.detach().contiguous()
             for k, v in embedding.state_dict().items()}
    shape = {k: v for k, v in asdict(embedding.cfg).items() if k not in SETTINGS}
    with atomic_path(Path(model_dir) / FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": str(FORMAT), "config": json.dumps(shape),
                                             "record": json.dumps(record or {})})
    save_settings(model_dir, embedding.cfg)


def save_settings(model_dir: Path, cfg: RetrievalConfig) -> None:
    """The search settings alone, in search.json: the towers' file, and so every gallery's model id, unchanged."""
    write_atomic(Path(model_dir) / SETTINGS_FILE, json.dumps({k: getattr(cfg, k) for k in SETTINGS}, indent=1) + "\n")


def caption_vectors(embedding: Embedding | None, captions: list[list[str]],
                    device: str | torch.device = "auto") -> np.ndarray:
    """[n, 384]: per photo, the normalised mean of its captions' text vectors (best caption first); without an
    embedding, all-MiniLM-L6-v2's own vectors, computed on `device`."""
    flat = [c for group in captions for c in group]
    vectors = embedding.text(flat) if embedding is not None else load_sentence_encoder(device).embed(flat)
    out, i = np.zeros((len(captions), DIM), np.float32), 0
    for row, group in enumerate(captions):
        mean = vectors[i:i + len(group)].mean(0)
        out[row] = mean / max(float(np.linalg.norm(mean)), 1e-8)
        i += len(group)
    return out


def photo_vectors(embedding: Embedding | None, images: np.ndarray | None, captions: list[list[str]],
                  device: str | torch.device = "auto") -> np.ndarray:
    """[n, 384] caption vectors, or [n, 768] caption vectors beside the photos' image vectors [n, 384]."""
    text = caption_vectors(embedding, captions, device)
    if embedding is None:
        return text
    return np.concatenate([text, images], 1)


def query_vectors(embedding: Embedding | None, texts: list[str], blend: float | None = None,
                  device: str | torch.device = "auto") -> np.ndarray:
    """Descriptions' vectors [n, 384 or 768], comparable with `photo_vectors` by inner product (`device`: as
    caption_vectors')."""
    if embedding is None:
        return load_sentence_encoder(device).embed(texts)
    t = embedding.text(texts)
    blend = embedding.cfg.blend if blend is None else blend
    return np.concatenate([(1 - blend) * t, blend * t], 1)


def text_logprob(model, pooled: torch.Tensor, grid: torch.Tensor, text: str) -> np.ndarray:
    """[B] log p(text | photo) under the captioner, for each of B photos."""
    ids = model.vocab.encode(clean(text), model.decode.max_len)
    return caption_logprob(model.decoder, pooled, grid, ids).cpu().numpy()
