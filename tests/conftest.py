"""Shared fixtures: a tiny random model folder, the real lite0 encoder (loaded once), the Flickr8k corpus, a decoder
kind registered from outside the package."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from captioner.data.text import END_ID, SPECIALS, Vocab
from captioner.models import encoders
from captioner.models.decode import DecodeConfig
from captioner.models.decoders import KINDS, Decoder, DecoderConfig, Dropout, Kind, unroll
from captioner.models.device import resolve
from captioner.models.encoders.base import Encoder
from captioner.models.folder import Model, save_model

# One thread: the tests' batches are tiny, and beside another busy process (a training run) two
# threads spend most of their time waiting for each other (measured: ~2 s vs 0.03 s per small batch).
TEST_THREADS = int(os.environ.get("CAPTIONER_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)

TINY_WORDS = ("a", "dog", "man", "woman", "boy", "girl", "in", "on", "the", "of", "with", "is", "are",
              "red", "blue", "white", "black", "grass", "water", "snow", "ball", "runs", "sits", "plays",
              "two", "people")
"""The tiny model's words after the four specials: 30 in all."""

TINY_MAX_LEN = 12
TINY_ENCODER = "efficientnet-lite0"  # the fastest encoder; 1280 features on a 7 x 7 grid at 224


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random (untrained) soft-attention model folder on lite0 at 224: captions are random words.

    Its `<end>` logit is pushed far down, so every caption is exactly TINY_MAX_LEN
    words long (never empty): tests can check format without guessing lengths.
    """
    vocab = Vocab([*SPECIALS, *TINY_WORDS])
    with torch.random.fork_rng():  # a fixed model without disturbing other tests' random numbers
        torch.manual_seed(0)
        decoder = Decoder(DecoderConfig(kind="attention", embed_dim=32, hidden_dim=32, attention_dim=16,
                                        dropout=0.0), len(vocab), feature_dim=1280)
        with torch.no_grad():
            decoder.net.out.bias[END_ID] -= 30.0
    folder = tmp_path_factory.mktemp("tiny-model")
    save_model(folder, Model(decoder.eval(), vocab, TINY_ENCODER, 224, DecodeConfig(beam=3, max_len=TINY_MAX_LEN)),
               card="# tiny random model\n\nUntrained: for tests only.\n")
    return folder


_ENCODERS: dict[tuple[str, int, torch.device, int], Encoder] = {}


def cached_encoder(name: str, input_size: int = encoders.DEFAULT_INPUT_SIZE, device="auto", top: int = 0) -> Encoder:
    """`encoders.load_encoder`, loading each (name, size, device, top) once per test session (loading takes
    seconds)."""
    key = (name, input_size, resolve(device), top)
    if key not in _ENCODERS:
        _ENCODERS[key] = encoders.load_encoder(name, input_size, device, top)
    return _ENCODERS[key]


@pytest.fixture(scope="session")
def lite0() -> Encoder:
    """The real efficientnet-lite0 encoder at 224, shared by the whole session."""
    return cached_encoder(TINY_ENCODER)


@pytest.fixture
def reuse_encoders(monkeypatch):
    """Make `Captioner.load` (and so the CLI) reuse session-loaded encoders instead of loading one per call."""
    import captioner.captioning

    monkeypatch.setattr(captioner.captioning, "load_encoder", cached_encoder)


@pytest.fixture(scope="session")
def flickr8k_root() -> Path:
    """The Flickr8k corpus folder beside the repository (or $CAPTIONER_FLICKR8K); skips when absent."""
    root = Path(os.environ.get("CAPTIONER_FLICKR8K")
                or Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k")
    if not (root / "Images").is_dir():
        pytest.skip(f"Flickr8k corpus not found at {root}: set CAPTIONER_FLICKR8K")
    return root


class GRUKind(torch.nn.Module):
    """A decoder kind written outside the package, as a new one would be: a GRU cell that reads each word with
    a dot-product glance at the grid."""

    def __init__(self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, pooled_dim: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, cfg.embed_dim)
        self.init = torch.nn.Linear(pooled_dim, cfg.hidden_dim)
        self.cells = torch.nn.Linear(feature_dim, cfg.hidden_dim)
        self.gru = torch.nn.GRUCell(cfg.embed_dim + cfg.hidden_dim, cfg.hidden_dim)
        self.out = torch.nn.Linear(cfg.hidden_dim, vocab_size)
        self.drop = Dropout(cfg.dropout)

    def start(self, pooled, grid):
        return (torch.tanh(self.init(pooled)),), (self.cells(grid),)  # state: h [B, H]; memory: cells [B, N, H]

    def step(self, words, state, memory):
        (h,), (cells,) = state, memory
        alpha = (cells @ h[:, :, None]).squeeze(2).softmax(1)  # [B, N]
        h = self.gru(torch.cat([words, (alpha[:, None] @ cells).squeeze(1)], 1), h)
        return h, (h,), alpha

    sequence = unroll


@pytest.fixture
def gru_kind(monkeypatch) -> str:
    """GRUKind registered as the decoder kind "gru" for one test; the registry is as it was afterwards."""
    monkeypatch.setitem(KINDS, "gru", Kind(f"{__name__}:GRUKind", "a GRU cell with a glance at the grid", attends=True))
    return "gru"
