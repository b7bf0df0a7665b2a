"""A small transformer decoder: causal self-attention over the words, cross-attention to the grid."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import DecoderConfig, Dropout


def attend(q, k, v, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that also returns its weights: q [B, h, T, d], k, v [B, h, t, d].

    Written out rather than F.scaled_dot_product_attention, whose CPU backward is
    many times slower at caption lengths. `hidden` [T, t] masks keys out.
    """
    scores = q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])  # [B, h, T, t]
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    alpha = scores.softmax(-1)
    return alpha @ v, alpha


class Block(nn.Module):
    """A pre-norm transformer decoder layer: causal self-attention, cross-attention to the grid, feed-forward."""

    def __init__(self, width: int, heads: int, ffn_dim: int, drop: nn.Module):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.query = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)  # grid cells -> keys and values, once per photo
        self.cross_out = nn.Linear(width, width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, width))
        self.drop = drop

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B, heads, T, W / heads]
        return x.unflatten(2, (self.heads, -1)).transpose(1, 2)

    def memory(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self.split(x) for x in self.kv(grid).chunk(2, -1))  # 2 x [B, heads, N, W / heads]

    def forward(self, x, past_k, past_v, grid_k, grid_v):
        """x [B, T, W] after the cached past_k, past_v [B, heads, t, d] -> x, keys, values, attention [B, T, N]."""
        q, k, v = map(self.split, self.qkv(self.norm1(x)).chunk(3, -1))
        k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        T, t = q.shape[2], k.shape[2]
        later = torch.ones(T, t, dtype=torch.bool, device=q.device).triu(t - T + 1)  # a word sees itself and before
        a, _ = attend(q, k, v, later)
        x = x + self.drop(self.self_out(a.transpose(1, 2).flatten(2)))
        a, alpha = attend(self.split(self.query(self.norm2(x))), grid_k, grid_v)
        x = x + self.drop(self.cross_out(a.transpose(1, 2).flatten(2)))
        x = x + self.drop(self.ffn(self.norm3(x)))
        return x, k, v, alpha.mean(1)


class Transformer(nn.Module):
    """A small transformer decoder: causal self-attention over the words, cross-attention to every grid cell.

    The pooled image vector joins every word's input, so each position sees the whole photo at once.
    """

    MAX_POSITIONS = 64

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, pooled_dim: int):
        super().__init__()
        W = cfg.hidden_dim
        if W % cfg.heads:
            raise ValueError(f"hidden_dim {W} is not a multiple of heads {cfg.heads}")
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lift = nn.Linear(cfg.embed_dim, W) if cfg.embed_dim != W else nn.Identity()  # e.g. 50-d GloVe
        self.position = nn.Embedding(self.MAX_POSITIONS, W)
        self.project = nn.Sequential(nn.Linear(feature_dim, W), nn.LayerNorm(W))  # grid cells -> width
        self.photo = nn.Linear(pooled_dim, W)  # pooled vector -> added to every input
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(W, cfg.heads, cfg.ffn_dim, self.drop) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(W)
        self.out = nn.Linear(W, vocab_size)

    def start(self, pooled, grid):
        cells = self.drop(self.project(grid))  # [B, N, W]
        memory = (self.photo(self.drop(pooled)),)  # [B, W]
        memory += tuple(t for block in self.blocks for t in block.memory(cells))  # per block: keys, values
        B, W, heads = grid.shape[0], self.norm.normalized_shape[0], self.blocks[0].heads
        empty = cells.new_zeros(B, heads, 0, W // heads)
        return (empty,) * (2 * len(self.blocks)), memory

    def sequence(self, words, steps, state, memory, owner, chunk: int = 32):
        """All positions at once: the causal mask keeps each word from seeing the ones after it.

        Captions run in chunks of similar length, each cut to its longest, so padding costs little.
        """
        B, T = words.shape[:2]
        features = words.new_zeros(B, T, self.norm.normalized_shape[0])
        attention = words.new_zeros(B, T, memory[1].shape[2])
        for rows in steps.argsort(descending=True).split(chunk):
            t = int(steps[rows[0]])
            where = owner.index_select(0, rows)
            f, _, a = self.run(words[rows, :t], tuple(s.index_select(0, where) for s in state),
                               tuple(m.index_select(0, where) for m in memory))
            features[rows, :t] = f.to(features.dtype)
            attention[rows, :t] = a.to(attention.dtype)
        return features, attention

    def step(self, words, state, memory):
        features, state, attention = self.run(words[:, None], state, memory)
        return features[:, 0], state, attention[:, 0]

    def run(self, words, state, memory):
        """words [B, T, E] after the cached positions -> features [B, T, W], the new cache, attention [B, T, N]."""
        past = state[0].shape[2]
        positions = torch.arange(past, past + words.shape[1], device=words.device).clamp(max=self.MAX_POSITIONS - 1)
        photo, grid = memory[0], memory[1:]
        x = self.drop(self.lift(words) + self.position(positions) + photo[:, None])
        cache = []
        for i, block in enumerate(self.blocks):
            x, k, v, attention = block(x, state[2 * i], state[2 * i + 1], grid[2 * i], grid[2 * i + 1])
            cache += [k, v]
        return self.norm(x), tuple(cache), attention
