"""A model is a folder: model.safetensors, config.json, vocab.json, tags.json, MODEL_CARD.md, and for a model
whose encoder top was fine-tuned, encoder_top.safetensors (that top's weights).

No pickle: loading runs no code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.text import Vocab
from ..errors import CaptionerError
from ..files import atomic_path, write_atomic
from .decode import DecodeConfig
from .decoders import Decoder, DecoderConfig, pack
from .device import fast_dtype, resolve

FORMAT = 1
TOP_FORMAT = 2  # a model with a fine-tuned encoder top: a captioner that reads only format 1 would ignore the top
TOP_FILE = "encoder_top.safetensors"
DEFAULT_MODEL = Path(__file__).parents[1] / "assets" / "default"


@dataclass
class Model:
    decoder: Decoder
    vocab: Vocab
    encoder: str
    input_size: int
    decode: DecodeConfig
    class_words: list[str] | None = None  # the caption word of each of the encoder's classes (tags.json)
    folder: Path | None = None  # where it was loaded from
    top_blocks: int = 0  # its decoder reads the encoder with its last top_blocks blocks and head fine-tuned...
    top: dict[str, torch.Tensor] | None = None  # ...to these weights (encoders.base.Top's; None: the encoder's own)


def save_model(folder: str | Path, model: Model, card: str = "") -> None:
    """Write the model folder; each file is replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.decoder.state_dict().items()}  # loads anywhere
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": str(FORMAT)})
    encoder = {"name": model.encoder, "input_size": model.input_size}
    if model.top is not None:
        with atomic_path(folder / TOP_FILE) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.top.items()}, str(tmp))
        encoder["top"] = model.top_blocks
    config = {
        "format": FORMAT if model.top is None else TOP_FORMAT,
        "encoder": encoder,
        "decoder": asdict(model.decoder.cfg),
        "feature_dim": model.decoder.feature_dim,
        "classes": model.decoder.classes,
        "vocab_size": len(model.vocab),
        "decode": asdict(model.decode),
    }
    write_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")
    write_atomic(folder / "vocab.json", json.dumps({"words": model.vocab.words}) + "\n")
    if model.class_words is not None:
        write_atomic(folder / "tags.json", json.dumps({"class_words": model.class_words}) + "\n")
    if card:
        write_atomic(folder / "MODEL_CARD.md", card)


def load_model(folder: str | Path | None = None, fast: bool = False, device: str | torch.device = "auto") -> Model:
    """Load a model folder (default: the model shipped with captioner), its decoder on `device` (see
    device.resolve).

    With `fast`, for captioning only: the decoder runs at the device's fast
    precision (device.fast_dtype: bfloat16 where the CPU supports it natively,
    about three times faster per word), its weights packed for oneDNN on the CPU
    once (decoders.pack), which halves the products again.
    """
    device = resolve(device)
    folder = Path(folder) if folder else DEFAULT_MODEL
    needed = ["model.safetensors", "config.json", "vocab.json"]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise CaptionerError(f"{folder} is not a captioner model folder (no {missing[0]}): "
                             "pass a folder written by `captioner train`")
    try:
        config = json.loads((folder / "config.json").read_text())
        if config.get("format") not in (FORMAT, TOP_FORMAT):
            raise CaptionerError(f"{folder}/config.json has model format {config.get('format')!r}, "
                                 f"this captioner reads formats {FORMAT} and {TOP_FORMAT}: upgrade captioner or "
                                 "retrain")
        top_blocks = config["encoder"].get("top", 0)
        if top_blocks and not (folder / TOP_FILE).is_file():
            raise CaptionerError(f"{folder} is not a complete model folder (no {TOP_FILE}, the weights of its "
                                 "fine-tuned encoder top): copy the whole folder")
        top = load_file(str(folder / TOP_FILE)) if top_blocks else None
        vocab = Vocab.load(folder / "vocab.json")
        decoder = Decoder(DecoderConfig(**config["decoder"]), len(vocab), config["feature_dim"],
                          config.get("classes", 0))
        decoder.load_state_dict(load_file(str(folder / "model.safetensors")))
        tags = folder / "tags.json"
        class_words = json.loads(tags.read_text())["class_words"] if tags.is_file() else None
    except CaptionerError:
        raise
    except Exception as e:  # a damaged or foreign folder: say which, not where in our code
        raise CaptionerError(f"{folder} holds a damaged or incompatible model ({type(e).__name__}: {e})") from None
    decoder.eval().to(device)
    if fast:
        pack(decoder.to(fast_dtype(device)))
    return Model(decoder, vocab, config["encoder"]["name"], config["encoder"]["input_size"],
                 DecodeConfig(**config.get("decode", {})), class_words, folder, top_blocks, top)

