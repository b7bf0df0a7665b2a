"""Photo factories for tests: odd-but-valid photos and broken ones, made with Pillow/numpy.

A plain module (not a test file) so every test that reads photos can reuse the
same files: the image tests check each one loads right, the CLI tests check
`captioner caption` on them. Everything is small and made in milliseconds.

    from photos import make_odd_photos, make_broken_photos, BROKEN_MESSAGES
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

ODD_SIZES: dict[str, tuple[int, int]] = {
    "rgb_jpeg": (64, 48),
    "gray_png": (64, 48),
    "gray_alpha_png": (64, 48),
    "gray_transparent_png": (64, 48),
    "palette_png": (64, 48),
    "palette_transparent_png": (64, 48),
    "rgba_png": (64, 48),
    "cmyk_jpeg": (64, 48),
    "cmyk_tiff": (64, 48),
    "gray16_png": (3, 1),
    "int32_tiff": (64, 48),
    "float_tiff": (64, 48),
    "bilevel_png": (64, 48),
    "ycbcr_tiff": (64, 48),
    "bmp": (64, 48),
    "webp": (64, 48),
    "animated_gif": (32, 32),
    "animated_webp": (32, 32),
    "animated_png": (32, 32),
    "tiny_1x1": (1, 1),
    "panorama_10000x50": (10000, 50),
    "big_jpeg": (2000, 1500),
    "exif_rotated_jpeg": (20, 40),  # stored 40 x 20 with Orientation=6 (rotate 90 degrees clockwise)
    "upper_case_JPG": (64, 48),
    "unicode_name": (64, 48),
}
"""Each odd photo's size (width, height) after `load_photo` without a target size."""

BROKEN_MESSAGES: dict[str, str | None] = {
    "empty": "is empty",
    "text_named_jpg": "not a photo",
    "bomb_png": "megapixel limit",
    "folder_named_jpg": "is a folder",
    "missing": "does not exist",
    "damaged_png": "damaged photo",
    "truncated_jpeg": None,  # loads what is there, with a TruncatedPhotoWarning
}
"""A phrase of the PhotoError each broken photo raises (None: it loads, with a warning)."""


def gradient(width: int, height: int) -> np.ndarray:
    """An RGB uint8 test picture with smooth variation (compresses like a photo)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return rgb.astype(np.uint8)


def _frames(colours: list[tuple[int, int, int]], size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), c) for c in colours]


def make_odd_photos(folder: Path) -> dict[str, Path]:
    """Valid photos in every awkward mode, shape and name; keys as in ODD_SIZES."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, filename: str, img: Image.Image, **kw) -> None:
        out[name] = folder / filename
        img.save(out[name], **kw)

    base = Image.fromarray(gradient(64, 48))
    save("rgb_jpeg", "rgb.jpg", base, quality=90)
    save("gray_png", "gray.png", base.convert("L"))

    la = np.zeros((48, 64, 2), np.uint8)
    la[..., 0], la[:, 32:, 1] = 40, 255  # left half fully transparent
    save("gray_alpha_png", "gray_alpha.png", Image.fromarray(la, "LA"))
    gray = Image.new("L", (64, 48), 7)
    gray.paste(200, (32, 0, 64, 48))
    save("gray_transparent_png", "gray_transparent.png", gray, transparency=7)  # left half transparent

    palette = base.quantize(16)
    save("palette_png", "palette.png", palette)
    pal_t = Image.new("P", (64, 48), 0)
    pal_t.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal_t.paste(1, (32, 0, 64, 48))  # right half red, left half index 0 = transparent black
    save("palette_transparent_png", "palette_transparent.png", pal_t, transparency=0)

    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[:, 32:] = (0, 0, 255, 255)  # right half opaque blue, left half transparent black
    save("rgba_png", "rgba.png", Image.fromarray(rgba, "RGBA"))

    cyan = Image.new("CMYK", (64, 48), (255, 0, 0, 0))
    save("cmyk_jpeg", "cmyk.jpg", cyan, quality=95)
    save("cmyk_tiff", "cmyk.tif", cyan)

    save("gray16_png", "gray16.png", Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)))
    save("int32_tiff", "int32.tif", Image.fromarray(np.full((48, 64), 65535, np.int32)))
    save("float_tiff", "float.tif", Image.fromarray(np.full((48, 64), 0.5, np.float32)))
    save("bilevel_png", "bilevel.png", base.convert("L").point(lambda v: 255 if v > 128 else 0).convert("1"))
    save("ycbcr_tiff", "ycbcr.tif", base.convert("YCbCr"))
    save("bmp", "photo.bmp", base)
    save("webp", "photo.webp", base, quality=90)

    first, *rest = _frames([RED, GREEN, BLUE])
    save("animated_gif", "animated.gif", first, save_all=True, append_images=rest, duration=100, loop=0)
    first, *rest = _frames([RED, GREEN, BLUE])
    save("animated_webp", "animated.webp", first, save_all=True, append_images=rest, duration=100, lossless=True)
    first, *rest = _frames([RED, GREEN, BLUE])
    save("animated_png", "animated.png", first, save_all=True, append_images=rest, duration=100)

    save("tiny_1x1", "tiny.png", Image.new("RGB", (1, 1), GREEN))
    save("panorama_10000x50", "panorama.jpg", Image.new("RGB", (10000, 50), (30, 120, 200)), quality=85)
    save("big_jpeg", "big.jpg", Image.fromarray(gradient(2000, 1500)), quality=80)

    rotated = Image.new("RGB", (40, 20), BLUE)
    rotated.paste(RED, (0, 0, 20, 20))  # left half red: after Orientation=6 it is the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated_jpeg", "rotated.jpg", rotated, exif=exif.tobytes(), quality=95)

    save("upper_case_JPG", "UPPER.JPG", base, quality=90)
    save("unicode_name", "été photo ñ.png", base)
    assert out.keys() == ODD_SIZES.keys()
    return out


def bomb_png_bytes(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny valid-looking PNG whose header declares width x height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def truncated_jpeg_bytes() -> bytes:
    """A baseline 320 x 240 JPEG cut at 60% of its bytes: its top rows (red band) are intact."""
    import io

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pixels[:24] = RED
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: int(len(data) * 0.6)]


def make_broken_photos(folder: Path) -> dict[str, Path]:
    """Files that look like photos but are not (or are damaged); keys as in BROKEN_MESSAGES."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {name: folder / filename for name, filename in {
        "empty": "empty.jpg",
        "text_named_jpg": "notes.jpg",
        "bomb_png": "bomb.png",
        "folder_named_jpg": "x.jpg",
        "missing": "missing.jpg",
        "damaged_png": "damaged.png",
        "truncated_jpeg": "truncated.jpg",
    }.items()}
    out["empty"].write_bytes(b"")
    out["text_named_jpg"].write_text("these are my holiday notes, not a photo\n")
    out["bomb_png"].write_bytes(bomb_png_bytes())
    out["folder_named_jpg"].mkdir(exist_ok=True)
    png = out["damaged_png"]
    Image.fromarray(gradient(64, 48)).save(png)
    data = bytearray(png.read_bytes())
    idat = data.index(b"IDAT") + 4
    data[idat + 10: idat + 30] = bytes(20)  # corrupt the compressed pixels (the CRC no longer matches)
    png.write_bytes(bytes(data))
    out["truncated_jpeg"].write_bytes(truncated_jpeg_bytes())
    assert out.keys() == BROKEN_MESSAGES.keys()
    return out
