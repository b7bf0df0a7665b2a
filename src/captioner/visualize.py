"""Attention pictures: the photo once per word, lit where the model looked when it chose that word."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .captioning import Caption
from .data.images import load_photo

TILE = 224
LABEL = 24
COLUMNS = 5


def attention_tiles(caption: Caption) -> Image.Image:
    """One tile per word (and the end of the sentence): the photo darkened away from the word's attention."""
    photo = load_photo(caption.path, TILE)
    width = TILE
    height = max(1, round(TILE * photo.height / photo.width))
    base = np.asarray(photo.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    words = [*caption.words, "<end>"]
    rows = -(-len(words) // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * width, rows * (height + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for i, (word, alpha) in enumerate(zip(words, caption.attention)):
        heat = Image.fromarray((alpha / max(alpha.max(), 1e-8) * 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BILINEAR)
        weight = np.asarray(heat, dtype=np.float32)[..., None] / 255
        lit = base * (0.25 + 0.75 * weight)
        x, y = (i % COLUMNS) * width, (i // COLUMNS) * (height + LABEL)
        sheet.paste(Image.fromarray(lit.clip(0, 255).astype(np.uint8)), (x, y))
        draw.text((x + width // 2, y + height + LABEL // 2), word, fill="black", font=font, anchor="mm")
    return sheet


def save_attention(caption: Caption, folder: Path, name: str | None = None) -> Path:
    """Write `name` (default `<photo name>.attention.png`) into `folder` and return its path."""
    path = folder / (name or f"{caption.path.stem}.attention.png")
    attention_tiles(caption).save(path)
    return path
