"""The inject architecture (Show and Tell): the image is the LSTM's first input."""
from __future__ import annotations

from torch import nn

from .base import DecoderConfig, Dropout, unroll


class Inject(nn.Module):
    """Show and Tell: the image is the LSTM's first input, the words follow."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, pooled_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.image = nn.Linear(pooled_dim, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim, cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        self.drop = Dropout(cfg.dropout)

    def start(self, pooled, grid):
        img = self.image(self.drop(pooled))  # [B, E]
        return self.lstm(img), ()

    def step(self, words, state, memory):
        h, c = self.lstm(words, state)
        return h, (h, c), None

    sequence = unroll
