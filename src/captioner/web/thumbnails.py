"""Small previews of gallery photos, so a page of similar photos does not download the originals."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

THUMBNAIL_SIDE = 320


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """The photo (EXIF-rotated) shrunk to fit `side` x `side`, as WebP bytes (transparency kept).

    Plain Pillow rather than `images.load_photo`: that one silences a warning
    with `warnings.catch_warnings`, which must not run beside the captioning
    worker (it records warnings process-wide). Gallery photos were read once
    already, when they were indexed, so the checks of `load_photo` are not needed.
    """
    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(img)
        img.thumbnail((side, side))
        img = img.convert("RGBA" if img.has_transparency_data else "RGB")
        out = io.BytesIO()
        img.save(out, "WEBP", quality=80)
        return out.getvalue()
