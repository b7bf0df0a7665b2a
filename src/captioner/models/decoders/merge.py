"""The merge architecture: image and text meet after the LSTM."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import DecoderConfig, Dropout, State, unroll


class Merge(nn.Module):
    """Image and text meet after the LSTM (the merge architecture): logits = f(h_t + W img)."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, pooled_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim, cfg.hidden_dim)
        self.image = nn.Linear(pooled_dim, cfg.hidden_dim)
        self.hidden = nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        self.drop = Dropout(cfg.dropout)

    def start(self, pooled: torch.Tensor, grid: torch.Tensor) -> tuple[State, State]:
        img = F.relu(self.image(self.drop(pooled)))  # [B, H]
        zeros = img.new_zeros(img.shape[0], self.lstm.hidden_size)
        return (zeros, zeros), (img,)

    def step(self, words, state, memory):
        h, c = self.lstm(words, state)
        return F.relu(self.hidden(h + memory[0])), (h, c), None

    sequence = unroll
