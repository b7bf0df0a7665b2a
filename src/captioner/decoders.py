"""Caption decoders behind one interface: image features + previous word -> next-word logits.

`Decoder` gives every kind the same interface:
    start(pooled [B, D], grid [B, N, D]) -> (state, memory)
    step(words [B], state, memory)        -> (logits [B, V], state, attention [B, N] | None)
    forward(pooled, grid, captions [B, T], owner [B]) -> (logits [B, T-1, V], attention [B, T-1, N] | None)
Each kind supplies `embed`, `out` and `drop` modules, `start`, and a `step` from
an embedded word to the vector `out` reads, so that training embeds, drops out
and projects to the vocabulary all steps at once. In all of them, `state` (recurrent, changes every step) and `memory` (fixed per photo) are
tuples of tensors with the batch first, so beam search can reorder and repeat
them without knowing which decoder it drives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .text import PAD_ID

State = tuple[torch.Tensor, ...]


class Dropout(nn.Dropout):
    """nn.Dropout with the mask drawn from uniform noise: the same function, several times faster on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x).uniform_() >= self.p
        return x * keep / (1 - self.p)


@dataclass
class DecoderConfig:
    kind: str = "attention"  # merge | inject | attention
    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    glove: str = "none"  # none | frozen | trained: initialise the word embedding from GloVe 6B 50d


class Merge(nn.Module):
    """Image and text meet after the LSTM (the merge architecture): logits = f(h_t + W img)."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim, cfg.hidden_dim)
        self.image = nn.Linear(feature_dim, cfg.hidden_dim)
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


class Inject(nn.Module):
    """Show and Tell: the image is the LSTM's first input, the words follow."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim)
        self.image = nn.Linear(feature_dim, cfg.embed_dim)
        self.lstm = nn.LSTMCell(cfg.embed_dim, cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        self.drop = Dropout(cfg.dropout)

    def start(self, pooled, grid):
        img = self.image(self.drop(pooled))  # [B, E]
        return self.lstm(img), ()

    def step(self, words, state, memory):
        h, c = self.lstm(words, state)
        return h, (h, c), None


class Attention(nn.Module):
    """Show, Attend and Tell (soft): each step attends over the grid, with a gating scalar."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        H, A, E = cfg.hidden_dim, cfg.attention_dim, cfg.embed_dim
        self.embed = nn.Embedding(vocab_size, E)
        self.project = nn.Linear(feature_dim, H)  # grid cells -> context vectors
        self.keys = nn.Linear(H, A)
        self.query = nn.Linear(H, A)
        self.score = nn.Linear(A, 1)
        self.gate = nn.Linear(H, H)
        self.init_h = nn.Linear(feature_dim, H)
        self.init_c = nn.Linear(feature_dim, H)
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


KINDS = {"merge": Merge, "inject": Inject, "attention": Attention}


class Decoder(nn.Module):
    """Wraps one decoder kind with teacher-forced training over whole captions."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int):
        super().__init__()
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown decoder kind {cfg.kind!r}: choose one of {', '.join(KINDS)}")
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.net = KINDS[cfg.kind](cfg, vocab_size, feature_dim)

    @property
    def embedding(self) -> nn.Embedding:
        return self.net.embed

    def start(self, pooled: torch.Tensor, grid: torch.Tensor) -> tuple[State, State]:
        dtype = self.net.embed.weight.dtype  # float32, or bfloat16 for fast inference
        return self.net.start(pooled.to(dtype), grid.to(dtype))

    def step(self, words: torch.Tensor, state: State, memory: State):
        net = self.net
        features, state, alpha = net.step(net.drop(net.embed(words)), state, memory)
        return net.out(net.drop(features)), state, alpha

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
                owner: torch.Tensor | None = None):
        """Teacher forcing: one pass over each whole caption (`<start> w1 .. wn <end> <pad>..`).

        With `owner` [B], caption b belongs to photo owner[b]: each photo's features
        are prepared once for all of its captions. Captions run longest first and
        ended ones leave the batch, so padding costs little.
        """
        B, T = captions.shape[0], captions.shape[1] - 1
        steps = (captions != PAD_ID).sum(1) - 1  # [B]: words to predict in each caption
        order = steps.argsort(descending=True, stable=True)
        owner = order if owner is None else owner.index_select(0, order)
        state, memory = self.start(pooled, grid)
        state = tuple(s.index_select(0, owner) for s in state)
        memory = tuple(m.index_select(0, owner) for m in memory)
        net = self.net
        words = net.drop(net.embed(captions.index_select(0, order)[:, :-1]))  # [B, T, E]
        active = (steps.index_select(0, order)[None, :] > torch.arange(T)[:, None]).sum(1).tolist()  # [T]
        active = [b for b in active if b > 0]
        features, alphas = [], []
        rows = B  # captions still run; shrunk in steps, as each slice of memory costs a full-size gradient
        for t, b in enumerate(active):
            if b <= rows * 3 // 4:
                rows = b
                state = tuple(s[:b] for s in state)
                memory = tuple(m[:b] for m in memory)
            step_features, state, alpha = net.step(words[:rows, t], state, memory)
            features.append(F.pad(step_features[:b], (0, 0, 0, B - b)))  # ended captions: zeros
            alphas.append(F.pad(alpha[:b], (0, 0, 0, B - b)) if alpha is not None else None)
        unsort = order.argsort()
        logits = net.out(net.drop(torch.stack(features, 1).index_select(0, unsort)))
        attention = torch.stack(alphas, 1).index_select(0, unsort) if alphas[0] is not None else None
        return logits, attention
