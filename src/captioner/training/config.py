"""Training configuration: dataclasses loaded from TOML (see configs/ for one per decoder)."""
from __future__ import annotations

import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..errors import CaptionerError
from ..models.decoders import DecoderConfig


@dataclass
class CorpusConfig:
    prepared: str  # a folder written by `captioner prepare`
    share: float = 1.0  # its share of each epoch's training captions, relative to the other corpora's


@dataclass
class DataConfig:
    prepared: str = ""  # one corpus (a folder written by `captioner prepare`); or several in [[data.corpora]]
    corpora: list[CorpusConfig] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)  # prepared corpora whose dev splits choose the epoch by their
    # mean CIDEr (e.g. one kept apart from training, like coco-val-mini); empty: the training corpora's
    encoder: str = "efficientnet-lite2"
    input_size: int = 224
    cache: str = ""  # one feature cache folder for every corpus; empty: each corpus's <prepared>/features

    def __post_init__(self) -> None:
        if self.prepared and self.corpora:
            raise CaptionerError("[data]: give one corpus in prepared or several in [[data.corpora]], not both")
        self.corpora = [c if isinstance(c, CorpusConfig) else _section(CorpusConfig, c, "[[data.corpora]]")
                        for c in self.corpora] or [CorpusConfig(self.prepared or "data/flickr8k")]
        self.prepared = ""
        if any(c.share < 0 for c in self.corpora) or not any(c.share > 0 for c in self.corpora):
            raise CaptionerError("[[data.corpora]]: shares must not be negative, and at least one must be above 0")
        self.dev = self.dev or [c.prepared for c in self.corpora if c.share > 0]


@dataclass
class TrainConfig:
    out: str = "runs/model"  # checkpoints, logs and the selected model (out/model)
    epochs: int = 20
    batch_captions: int = 80  # captions per batch; a batch holds whole photos, each with all of its captions
    lr: float = 5e-4
    min_lr: float = 2e-5  # cosine schedule from lr down to min_lr over all epochs
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    scheduled_sampling: float = 0.0  # the chance an input word is the model's own guess, reached at the last step
    attention_reg: float = 1.0  # doubly stochastic attention regularisation (attention decoders)
    patience: int = 4  # end a phase after this many epochs without a better dev CIDEr
    # Self-critical sequence training after cross-entropy: sample captions, reward each by its
    # CIDEr-D against the photo's references, push up those above the baseline.
    scst_epochs: int = 0
    scst_start: str = "best"  # best: the best cross-entropy epoch by dev CIDEr | last: the last one
    scst_lr: float = 2e-5  # constant
    scst_samples: int = 5  # captions sampled per photo (batch_captions // scst_samples photos per batch)
    scst_min_refs: int = 1  # train self-critically only on photos with at least this many references
    scst_xe: float = 0.0  # add this share of the cross-entropy on the batch's references (keeps words varied)
    scst_temperature: float = 1.0  # below 1: samples keep closer to the model's most likely words
    scst_baseline: str = "mean"  # mean: of the photo's other samples | greedy: the greedy caption's reward
    seed: int = 0
    threads: int = 0  # torch threads; 0: all cores
    bf16: bool = True  # bfloat16 autocast where the CPU supports it (about twice as fast)


@dataclass
class DecodeConfig:
    beam: int = 3
    length_penalty: float = 0.0
    max_len: int = 30
    block_ngram: int = 0  # n > 0: no caption repeats an n-gram of its own
    tag_weight: float = 0.0  # guided decoding: the word of a tag with probability p gains tag_weight x p


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _section(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise CaptionerError(f"{where}: expected a table of settings, not {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CaptionerError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(known)}")
    missing = [name for name, f in known.items() if name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise CaptionerError(f"{where}: the setting {missing[0]!r} is missing")
    return cls(**values)


def config_from_dict(values: dict, where: str = "config") -> Config:
    sections = {f.name: f.default_factory for f in fields(Config)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise CaptionerError(f"{where}: unknown section [{unknown[0]}]; known: {', '.join(sections)}")
    return Config(**{name: _section(type(make()), values.get(name, {}), f"{where} [{name}]")
                     for name, make in sections.items()})


def load_config(path: str | Path) -> Config:
    """A Config from a TOML file; every setting left out keeps its default."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CaptionerError(f"{path}: no such config file (see configs/ for examples)")
    except tomllib.TOMLDecodeError as e:
        raise CaptionerError(f"{path}: not valid TOML ({e})")
    return config_from_dict(values, str(path))
