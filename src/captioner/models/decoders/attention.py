"""Soft attention (Show, Attend and Tell): an LSTM that looks over the grid at every word."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import DecoderConfig, Dropout, unroll


class Attention(nn.Module):
    """Show, Attend and Tell (soft): each step attends over the grid, with a gating scalar."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, pooled_dim: int):
        super().__init__()
        H, A, E = cfg.hidden_dim, cfg.attention_dim, cfg.embed_dim
        self.embed = nn.Embedding(vocab_size, E)
        self.project = nn.Linear(feature_dim, H)  # grid cells -> context vectors
        self.keys = nn.Linear(H, A)
        self.query = nn.Linear(H, A)
        self.score = nn.Linear(A, 1)
        self.gate = nn.Linear(H, H)
        self.init_h = nn.Linear(pooled_dim, H)
        self.init_c = nn.Linear(pooled_dim, H)
        self.lstm = nn.LSTMCell(E + H, H)
        self.deep = nn.Linear(H + H, E)  # deep output: h and context -> word space
        self.out = nn.Linear(E, vocab_size)
        self.drop = Dropout(cfg.dropout)

    def start(self, pooled, grid):
        ctx = self.drop(F.relu(self.project(grid)))  # [B, N, H]
        keys = self.keys(ctx)  # [B, N, A]
        state = (torch.tanh(self.init_h(pooled)), torch.tanh(self.init_c(pooled)))
        return state, (ctx, keys)

    def step(self, words, state, memory):
        ctx, keys = memory
        h, c = state
        scores = self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(2)  # [B, N]
        alpha = scores.softmax(1)
        z = torch.bmm(alpha.unsqueeze(1), ctx).squeeze(1) * torch.sigmoid(self.gate(h))  # [B, H]
        h, c = self.lstm(torch.cat([words, z], 1), (h, c))
        return torch.tanh(self.deep(torch.cat([h, z], 1))), (h, c), alpha

    sequence = unroll
