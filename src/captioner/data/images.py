"""Photos in: which files are photos, loading any of them as RGB, and the one resize to pixels.

Every part of captioner (features, captioning, the gallery, the web app) reads
photos through `load_photo` and `to_pixels`, so a photo is seen the same way at
training and at inference: the whole photo, EXIF-rotated, alpha over white,
squashed to the encoder's square input (the way the Flickr8k copy was made).

Broken input raises `PhotoError`, one sentence naming the file and the fix.
A truncated file (one that ends early, e.g. an interrupted copy) is the one
exception: what is there is loaded, since the top of a photo usually still
shows its scene, and a warning sentence says so: `read_photo` returns it with
the photo (so concurrent callers each get their own), `load_photo` warns with
`TruncatedPhotoWarning`.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import CaptionerError

PHOTO_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
)
"""Suffixes (lower case, with the dot) of the files a folder expands to; matched case-insensitively."""

VIDEO_SUFFIXES: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv", ".flv",
     ".3gp", ".ogv"})
"""Suffixes of the video files a folder expands to (for `captioner video` and `captioner index`); any file FFmpeg
reads may be named."""


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a video by its name (one of VIDEO_SUFFIXES, in any case)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def clock(seconds: float) -> str:
    """00:01:02.5: a time in a video, hours, minutes, seconds to a tenth."""
    tenths = round(seconds * 10)
    return f"{tenths // 36000:02d}:{tenths // 600 % 60:02d}:{tenths // 10 % 60:02d}.{tenths % 10}"


PHOTO_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The Pillow formats a photo may be in (JPEG includes a camera's MPO, PNG includes APNG).

Every photo (an upload, a file on the command line, a gallery or corpus photo)
is opened with only these decoders: Pillow knows dozens of other formats, some
of them decoded by outside programs (EPS by Ghostscript), none of them photos.
"""

MAX_PIXELS: int = 2 * 89_478_485
"""Largest photo (width x height, as its header declares) we decode: about 179 megapixels.

Pillow's own hard limit. Real photos (even 108 MP phone shots) fit; a header
declaring more is a corrupt file or a decompression bomb, refused before any
pixel is allocated.
"""

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)


class _TruncationSwitch:
    """Pillow's switch for loading truncated files is process-wide: while one decode has it on, another
    decode would load a truncated file silently, without our warning. So ordinary decodes run together
    (`strict`), and one that turns the switch on (`lenient`) runs alone; it goes first once it waits."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._strict = 0  # ordinary decodes running
        self._lenient = 0  # decodes that want the switch on, waiting or running

    @contextlib.contextmanager
    def strict(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._lenient)
            self._strict += 1
        try:
            yield
        finally:
            with self._changed:
                self._strict -= 1
                self._changed.notify_all()

    @contextlib.contextmanager
    def lenient(self) -> Iterator[None]:
        with self._changed:
            self._lenient += 1
            self._changed.wait_for(lambda: not self._strict)
        try:
            with _LENIENT_ONE_AT_A_TIME:
                before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
                try:
                    yield
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = before
        finally:
            with self._changed:
                self._lenient -= 1
                self._changed.notify_all()


_LENIENT_ONE_AT_A_TIME = threading.Lock()
_TRUNCATION = _TruncationSwitch()


class PhotoError(CaptionerError):
    """A photo that cannot be read: missing, a folder, empty, not an image, damaged or too large."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{os.fspath(path)}: {problem}")


class TruncatedPhotoWarning(UserWarning):
    """A photo whose file ends early: only the part that is there was loaded."""


def expand_paths(paths: Iterable[str | os.PathLike[str]],
                 suffixes: frozenset[str] = PHOTO_SUFFIXES) -> list[Path]:
    """The photo files named by `paths`, folders replaced by the photos inside them.

    A folder expands recursively, in sorted order, to its files whose suffix is
    in `suffixes` (PHOTO_SUFFIXES; the gallery adds VIDEO_SUFFIXES), skipping
    hidden files and folders (names starting with "."); a folder named like a
    photo (``dir.jpg/``) is still a folder. A folder with no photos in it is
    kept as given, so that `load_photo` reports it (an input never vanishes
    without a word). A file
    (or a path that does not exist) is kept as given whatever its suffix, so a
    text file named x.jpg gets a clear error from `load_photo` rather than
    being silently dropped. A path listed twice is kept once, where it first
    appears.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for given in paths:
        path = Path(given).expanduser()
        found = (files_in(path, suffixes) or [path]) if path.is_dir() else [path]
        for photo in found:
            if photo not in seen:
                seen.add(photo)
                out.append(photo)
    return out


def files_in(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """The files under `folder` whose suffix is in `suffixes` (any case), hidden files and folders skipped, sorted
    by their path inside it."""
    found: list[tuple[tuple[str, ...], Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                photo = Path(root, name)
                found.append((photo.relative_to(folder).parts, photo))
    return [photo for _, photo in sorted(found)]


def load_photo(path: str | os.PathLike[str], size: int | None = None) -> Image.Image:
    """`read_photo`'s image; its warning, if any, as a `TruncatedPhotoWarning`."""
    img, warning = read_photo(path, size)
    if warning:
        warnings.warn(warning, TruncatedPhotoWarning, stacklevel=2)
    return img


def read_photo(path: str | os.PathLike[str], size: int | None = None) -> tuple[Image.Image, str]:
    """The photo at `path` as an RGB image, ready for `to_pixels`, and a warning sentence ('' if none).

    EXIF orientation is applied; any mode becomes RGB (transparency composited
    over white, 16-bit and float images scaled to 8 bits, not clipped); an
    animated GIF / WebP / APNG gives its first frame. With `size`, a JPEG
    decodes at a reduced scale (1/2, 1/4 or 1/8) that is still at least `size`
    on both sides, which makes big photos several times faster to load.

    Raises PhotoError (one sentence naming the file) for a path that does not
    exist, a folder, an empty file, a file that is not an image, a damaged
    image, or one whose header declares more than MAX_PIXELS. A truncated file
    (one that ends early) loads what is there, the rest blank, with a warning
    saying so; one cut before any of the picture raises PhotoError.
    """
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size}")
    warning = ""
    with _open_file(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise PhotoError(path, "is empty (0 bytes; copy the photo again)")
        try:
            with _TRUNCATION.strict():
                img = _decode(f, path, size, allow_truncated=False)
        except OSError as exc:
            if "truncated" not in str(exc):
                raise PhotoError(path, _DAMAGED) from exc
            img = _decode_truncated(f, path, size)
            warning = (f"{os.fspath(path)}: the file ends early (truncated), so only part of the photo was read "
                       "and the rest is blank; copy the photo again for a reliable caption")
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except _DECODE_ERRORS:
            pass  # a broken EXIF block: keep the photo as stored rather than refuse it
    try:
        return _to_rgb(img), warning
    except (ValueError, OSError) as exc:
        raise PhotoError(path, f"uses the colour mode {img.mode}, which cannot be converted to RGB "
                               "(save it as an ordinary RGB JPEG or PNG)") from exc


_DAMAGED = "is a damaged photo that Pillow cannot decode (copy or export it again)"


def _open_file(path: str | os.PathLike[str]) -> BinaryIO:
    p = Path(path)
    if p.is_dir():
        raise PhotoError(path, "is a folder, not a photo (name a photo file inside it)")
    try:
        return open(p, "rb")
    except FileNotFoundError:
        raise PhotoError(path, "does not exist (check the path and its spelling)") from None
    except PermissionError:
        raise PhotoError(path, "cannot be read: permission denied (check the file's permissions)") from None
    except OSError as exc:
        raise PhotoError(path, f"cannot be read ({exc.strerror or exc}; check the file)") from None


def _decode(f: BinaryIO, path: str | os.PathLike[str], size: int | None, *,
            allow_truncated: bool) -> Image.Image:
    """Open and fully decode the first frame from the open file `f`.

    Raises PhotoError except for OSError from decoding, which the caller sorts
    into truncated (retried) and damaged.
    """
    f.seek(0)
    try:
        with warnings.catch_warnings():
            # Pillow warns above half its limit; we apply our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f, formats=PHOTO_FORMATS)
    except Image.DecompressionBombError as exc:
        raise PhotoError(path, _too_large(exc)) from None
    except UnidentifiedImageError:
        raise PhotoError(path, "is not a photo in a format captioner reads (a JPEG, PNG, WebP, GIF, BMP or TIFF)") \
            from None
    except _DECODE_ERRORS as exc:
        raise PhotoError(path, _DAMAGED) from exc
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise PhotoError(path, _too_large((width, height)))
    if width < 1 or height < 1:
        raise PhotoError(path, _DAMAGED)
    try:
        if size is not None:
            img.draft("RGB", (size, size))  # JPEG (and MPO) only; a no-op for other formats
        img.load()
    except OSError:
        if allow_truncated:
            raise PhotoError(path, _DAMAGED) from None
        raise
    except Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than its header
        raise PhotoError(path, _too_large(exc)) from None
    except _DECODE_ERRORS as exc:
        raise PhotoError(path, _DAMAGED) from exc
    return img


def _decode_truncated(f: BinaryIO, path: str | os.PathLike[str], size: int | None) -> Image.Image:
    with _TRUNCATION.lenient():  # Pillow's switch on just for this decode, no ordinary decode beside it
        img = _decode(f, path, size, allow_truncated=True)
    if _fraction_unlike_fill(img) < 0.01:
        # (Almost) nothing but the fill colour: a caption of it would be made up.
        raise PhotoError(path, "is truncated before any of the picture (copy the photo again)")
    return img


def _fraction_unlike_fill(img: Image.Image) -> float:
    """The share of pixels that differ from the last one (the colour a truncated decode fills with)."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    return float((arr != arr[-1, -1]).any(axis=-1).mean())


def _too_large(declared: tuple[int, int] | Exception) -> str:
    if isinstance(declared, tuple):
        what = f"declares {declared[0]} x {declared[1]} pixels"
    else:  # Pillow refused it while reading the header; its message holds the pixel count
        found = re.search(r"\((\d+) pixels\)", str(declared))
        what = f"declares {int(found[1]) / 1e6:,.0f} megapixels" if found else "declares too many pixels"
    return (f"{what}, more than the {MAX_PIXELS / 1e6:.0f}-megapixel limit "
            "(a corrupt file or a decompression bomb; shrink the photo if it is real)")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha over white, high bit depths scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_16bit(np.asarray(img))).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_scale_wide(np.asarray(img))).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounded (65535 -> 255, 32768 -> 128)."""
    wide = values.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """32-bit integer or float pixels to 8 bits, guessing the range from the values.

    Integers within 0..255 are kept, within 0..65535 scaled as 16-bit; floats
    within 0..1 are scaled by 255; anything else is stretched from its minimum
    to its maximum.
    """
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if is_float and 0.0 <= lo and hi <= 1.0:
        scaled = values * 255.0
    elif 0.0 <= lo and hi <= 255.0:
        scaled = values
    elif 0.0 <= lo and hi <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_pixels(img: Image.Image, size: int) -> np.ndarray:
    """The whole photo squashed to `size` x `size` RGB pixels (uint8, shape (size, size, 3)).

    No crop: the aspect ratio is squashed, as the training photos were.
    Bicubic resampling, with Pillow's `reducing_gap` so that big photos are
    first shrunk by a fast integer box reduction.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, not {size}")
    img = _to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of the file's bytes: the feature-cache key, so changed photos never reuse stale features."""
    with _open_file(path) as f:
        try:
            return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as exc:
            raise PhotoError(path, f"cannot be read ({exc.strerror or exc}; check the file)") from None
