"""The decoder kinds captioner knows, by name: networks that write a caption word by word from a photo's features
(base.py says what a kind supplies).

`Decoder` gives every kind the same interface:
    start(pooled [B, D], grid [B, N, D]) -> (state, memory)
    step(words [B], state, memory)        -> (logits [B, V], state, attention [B, N] | None)
    forward(pooled, grid, captions [B, T], owner [B]) -> (logits [B, T-1, V], attention [B, T-1, N] | None)

A kind is a module here with an nn.Module class, built from (DecoderConfig,
vocab_size, feature_dim, pooled_dim), and its entry in KINDS: adding one is the
module and the entry. `captioner train --help` and `captioner caption
--attention` list the kinds from KINDS, and a model's config.json names its
kind. Building a decoder is what imports torch: this registry does not, and the
names this package gives (Decoder, DecoderConfig, pack, ...) are imported from
their modules when first asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ...errors import CaptionerError


@dataclass(frozen=True)
class Kind:
    net: str  # "module:Class", the module named as imported from this package (".merge") or in full
    about: str  # for --help
    attends: bool = False  # looks at the grid word by word, and so has attention maps to show

    def load(self) -> type:
        """The kind's class: (cfg, vocab_size, feature_dim, pooled_dim) -> an nn.Module (see base.py)."""
        module, name = self.net.split(":")
        return getattr(importlib.import_module(module, __name__), name)


KINDS = {
    "merge": Kind(".merge:Merge", "an LSTM reads the words and the image joins its output"),
    "inject": Kind(".inject:Inject", "the image is an LSTM's first input and the words follow (Show and Tell)"),
    "attention": Kind(".attention:Attention", "an LSTM that attends over the grid at every word (Show, Attend and "
                      "Tell)", attends=True),
    "transformer": Kind(".transformer:Transformer", "causal self-attention over the words, cross-attention to the "
                        "grid", attends=True),
}


def find_kind(name: str) -> Kind:
    """The registered kind called `name`."""
    if name not in KINDS:
        raise CaptionerError(f"unknown decoder kind {name!r}: choose one of {', '.join(KINDS)}")
    return KINDS[name]


def attending() -> list[str]:
    """The names of the kinds that attend over the grid, sorted."""
    return sorted(name for name, kind in KINDS.items() if kind.attends)


_LAZY = {**dict.fromkeys(("Decoder", "DecoderConfig", "Dropout", "State", "unroll"), "base"),
         **dict.fromkeys(("PackedLinear", "PackedLSTMCell", "pack"), "packing"),
         "Merge": "merge", "Inject": "inject", "Attention": "attention",
         **dict.fromkeys(("Transformer", "Block", "attend"), "transformer")}
"""Where each name this package gives lives."""


def __getattr__(name: str):
    """The decoder itself and its parts, imported when first asked for: they bring torch, which listing the kinds
    (`captioner --help`) need not wait for."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
