"""What every decoder kind shares: the recurrent state's type, dropout, the config, `unroll` (a recurrent kind's
teacher-forced pass), and `Decoder`, which wraps one kind with its word embedding and vocabulary projection.

Each kind supplies `embed`, `out` and `drop` modules, `start`, a `step` from an
embedded word to the vector `out` reads, and a `sequence` that does the same for
whole teacher-forced captions (the recurrent kinds unroll `step`; the
transformer runs all positions at once), so that training embeds, drops out and
projects to the vocabulary all steps at once. In all of them, `state` (changes
every step: the LSTM's h and c, or the transformer's cached keys and values) and
`memory` (fixed per photo) are tuples of tensors with the batch first, so beam
search can reorder and repeat them without knowing which decoder it drives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...data.text import PAD_ID
from . import find_kind

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
    kind: str = "attention"  # a name in KINDS (see __init__.py)
    embed_dim: int = 512
    hidden_dim: int = 512  # the LSTM's state; the transformer's width
    attention_dim: int = 512  # attention kind only
    dropout: float = 0.5
    glove: str = "none"  # none | frozen | trained: initialise the word embedding from GloVe 6B 50d
    layers: int = 3  # transformer only
    heads: int = 8  # transformer only: hidden_dim must be a multiple
    ffn_dim: int = 2048  # transformer only: the feed-forward width
    tags: bool = False  # the encoder's class probabilities join the pooled vector (semantic attributes)


def unroll(net: nn.Module, words: torch.Tensor, steps: torch.Tensor, state: State, memory: State,
           owner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A recurrent kind's `step` over whole captions: words [B, T, E] -> features [B, T, F], attention.

    Caption b runs for steps[b] words from the state and memory of row owner[b].
    Captions run longest first and ended ones leave the batch, so padding costs little.
    """
    B, T = words.shape[:2]
    order = steps.argsort(descending=True, stable=True)
    rows = owner.index_select(0, order)
    state = tuple(s.index_select(0, rows) for s in state)
    memory = tuple(m.index_select(0, rows) for m in memory)
    words = words.index_select(0, order)
    active = (steps.index_select(0, order)[None, :] > torch.arange(T, device=steps.device)[:, None]).sum(1).tolist()
    active = [b for b in active if b > 0]
    features, alphas = [], []
    kept = B  # captions still run; shrunk in steps, as each slice of memory costs a full-size gradient
    for t, b in enumerate(active):
        if b <= kept * 3 // 4:
            kept = b
            state = tuple(s[:b] for s in state)
            memory = tuple(m[:b] for m in memory)
        step_features, state, alpha = net.step(words[:kept, t], state, memory)
        features.append(F.pad(step_features[:b], (0, 0, 0, B - b)))  # ended captions: zeros
        alphas.append(F.pad(alpha[:b], (0, 0, 0, B - b)) if alpha is not None else None)
    unsort = order.argsort()
    features = torch.stack(features, 1).index_select(0, unsort)
    attention = torch.stack(alphas, 1).index_select(0, unsort) if alphas[0] is not None else None
    return features, attention



class Decoder(nn.Module):
    """Wraps one decoder kind with teacher-forced training over whole captions.

    With cfg.tags, a frozen copy of the encoder's classifier (`classes` classes)
    turns the pooled vector [B, D] into class probabilities [B, classes], which
    join it: the kind sees a pooled vector of D + classes.
    """

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, classes: int = 0):
        super().__init__()
        kind = find_kind(cfg.kind)
        if cfg.tags and not classes:
            raise ValueError("a decoder with tags needs the number of classes of the encoder's classifier")
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.classes = classes if cfg.tags else 0
        self.classifier = nn.Linear(feature_dim, classes).requires_grad_(False) if cfg.tags else None
        self.net = kind.load()(cfg, vocab_size, feature_dim, feature_dim + self.classes)

    @property
    def embedding(self) -> nn.Embedding:
        return self.net.embed

    @property
    def device(self) -> torch.device:
        """Where the decoder's weights are, and so where it runs."""
        return self.net.embed.weight.device

    def start(self, pooled: torch.Tensor, grid: torch.Tensor) -> tuple[State, State]:
        """The state and memory of photos given by their features from any device (moved to the decoder's)."""
        dtype = self.net.embed.weight.dtype  # float32, or the device's fast dtype for fast inference
        pooled, grid = pooled.to(self.device), grid.to(self.device)
        if self.classifier is not None:
            probs = self.classifier(pooled.to(self.classifier.weight.dtype)).float().softmax(-1)  # [B, classes]
            pooled = torch.cat([pooled.float(), probs], 1)
        return self.net.start(pooled.to(dtype), grid.to(dtype))

    def step(self, words: torch.Tensor, state: State, memory: State):
        net = self.net
        features, state, alpha = net.step(net.drop(net.embed(words)), state, memory)
        return net.out(net.drop(features)), state, alpha

    def forward(self, pooled: torch.Tensor, grid: torch.Tensor, captions: torch.Tensor,
                owner: torch.Tensor | None = None):
        """Teacher forcing: one pass over each whole caption (`<start> w1 .. wn <end> <pad>..`).

        With `owner` [B], caption b belongs to photo owner[b]: each photo's features
        are prepared once for all of its captions.
        """
        captions = captions.to(self.device)
        steps = (captions != PAD_ID).sum(1) - 1  # [B]: words to predict in each caption
        owner = torch.arange(captions.shape[0], device=self.device) if owner is None else owner.to(self.device)
        state, memory = self.start(pooled, grid)
        net = self.net
        words = net.drop(net.embed(captions[:, :-1]))  # [B, T, E]
        features, attention = net.sequence(words, steps, state, memory, owner)
        return net.out(net.drop(features)), attention
