"""Training configuration: dataclasses loaded from TOML (the package's configs/ ships one per decoder)."""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import CaptionerError
from ..features.splits import DataConfig
from ..models.decode import DecodeConfig
from ..models.decoders import DecoderConfig
from ..settings import section

SHIPPED = Path(__file__).parents[1] / "configs"
"""The training configs that travel in the package: `captioner train NAME` finds them from any folder."""


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
    # Fine-tune the encoder's top with the decoder in the cross-entropy phase: its last encoder_top blocks and
    # head run on the cached map below them, at encoder_lr_scale x the decoder's learning rate, their BatchNorm
    # statistics kept; self-critical training keeps the top as cross-entropy left it. 0: the encoder is frozen.
    encoder_top: int = 0
    encoder_lr_scale: float = 0.1
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
    bf16: bool = True  # bfloat16 autocast where the device runs it natively (a CPU with it: about twice as fast)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(values: dict, where: str = "config") -> Config:
    sections = {f.name: f.default_factory for f in fields(Config)}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise CaptionerError(f"{where}: unknown section [{unknown[0]}]; known: {', '.join(sections)}")
    return Config(**{name: section(type(make()), values.get(name, {}), f"{where} [{name}]")
                     for name, make in sections.items()})


def shipped_configs() -> list[str]:
    """The names of the shipped training configs, sorted (`default`, `flickr8k-attention`, ...)."""
    return sorted(f.stem for f in SHIPPED.glob("*.toml"))


def find_config(name_or_path: str | Path) -> Path:
    """The TOML file at `name_or_path`, else the shipped config of that name (`flickr8k-attention[.toml]`)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".toml")
    if path.parent == Path(".") and name in shipped_configs():
        return SHIPPED / f"{name}.toml"
    raise CaptionerError(f"{path}: no such config file, and no shipped config of that name "
                         f"(shipped: {', '.join(shipped_configs())})")


def load_config(name_or_path: str | Path) -> Config:
    """A Config from a TOML file or a shipped config's name; every setting left out keeps its default."""
    path = find_config(name_or_path)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise CaptionerError(f"{path}: not valid TOML ({e})")
    return config_from_dict(values, str(path))
