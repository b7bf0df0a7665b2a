"""Caption decoders behind one interface: image features + previous word -> next-word logits.

`Decoder` gives every kind the same interface:
    start(pooled [B, D], grid [B, N, D]) -> (state, memory)
    step(words [B], state, memory)        -> (logits [B, V], state, attention [B, N] | None)
    forward(pooled, grid, captions [B, T], owner [B]) -> (logits [B, T-1, V], attention [B, T-1, N] | None)
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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.text import PAD_ID

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
    kind: str = "attention"  # merge | inject | attention | transformer
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


class PackedLinear(nn.Module):
    """A frozen bfloat16 nn.Linear on the CPU whose weight oneDNN lays out for its kernel once, not at every
    call as nn.Linear's is: a one-word decoding step's products take half the time, with the same numbers.
    The Linear's weight and bias stay, so the state dict is unchanged."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class PackedLSTMCell(nn.Module):
    """nn.LSTMCell with its two products packed as PackedLinear's: the same arithmetic as torch's own cell
    (gates = W_hh h + b_hh + W_ih x + b_ih; input, forget, cell and output gates in that order)."""

    def __init__(self, cell: nn.LSTMCell):
        super().__init__()
        self.input_size, self.hidden_size = cell.input_size, cell.hidden_size
        self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh = (
            cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        self.packed_ih, self.packed_hh = (torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
                                          for w in (cell.weight_ih, cell.weight_hh))

    def forward(self, x: torch.Tensor, state: State | None = None) -> State:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        h, c = state
        gates = torch.ops.mkldnn._linear_pointwise(h, self.packed_hh, self.bias_hh, "none", [], "").add_(
            torch.ops.mkldnn._linear_pointwise(x, self.packed_ih, self.bias_ih, "none", [], ""))
        i, f, g, o = gates.unsafe_chunk(4, 1)
        c = (f.sigmoid_() * c).add_(i.sigmoid_() * g.tanh_())
        return o.sigmoid_() * c.tanh(), c


def pack(decoder: nn.Module) -> nn.Module:
    """The decoder, for inference only, with each Linear and LSTMCell packed (PackedLinear) where it runs
    in bfloat16 on a CPU whose torch has oneDNN; otherwise as it is."""
    weight = next(decoder.parameters())
    if (weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or not torch.backends.mkldnn.is_available()
            or not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise"))):
        return decoder
    packed = {nn.Linear: PackedLinear, nn.LSTMCell: PackedLSTMCell}
    for module in list(decoder.modules()):
        for name, child in module.named_children():
            if type(child) in packed:
                setattr(module, name, packed[type(child)](child))
    return decoder.requires_grad_(False)


KINDS = {"merge": Merge, "inject": Inject, "attention": Attention, "transformer": Transformer}
ATTENDING = frozenset({"attention", "transformer"})
"""The kinds that look at the grid word by word, and so have attention maps to show."""


class Decoder(nn.Module):
    """Wraps one decoder kind with teacher-forced training over whole captions.

    With cfg.tags, a frozen copy of the encoder's classifier (`classes` classes)
    turns the pooled vector [B, D] into class probabilities [B, classes], which
    join it: the kind sees a pooled vector of D + classes.
    """

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, classes: int = 0):
        super().__init__()
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown decoder kind {cfg.kind!r}: choose one of {', '.join(KINDS)}")
        if cfg.tags and not classes:
            raise ValueError("a decoder with tags needs the number of classes of the encoder's classifier")
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.classes = classes if cfg.tags else 0
        self.classifier = nn.Linear(feature_dim, classes).requires_grad_(False) if cfg.tags else None
        self.net = KINDS[cfg.kind](cfg, vocab_size, feature_dim, feature_dim + self.classes)

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
