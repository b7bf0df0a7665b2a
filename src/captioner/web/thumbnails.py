"""Small previews of gallery photos, so a page of similar photos does not download the originals.

Photos are read by `images.read_photo`, so a thumbnail has the same pixel limit
and the same error sentences as captioning (a decompression bomb is refused
before any pixel is decoded). Thumbnails are kept in memory, keyed by the
content hash the gallery recorded and the side asked for: a cached one costs
no read (and no hash) of its photo, a copy shares its original's.
"""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ..data.images import read_photo

THUMBNAIL_SIDE = 320
CACHE_BYTES = 64 * 1024 * 1024


def thumbnail(path: Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """The photo (EXIF-rotated, alpha over white) shrunk to fit `side` x `side`, as WebP bytes.

    Raises PhotoError (one sentence naming the file) for a photo that cannot be read.
    """
    img, _ = read_photo(path, side)
    img.thumbnail((side, side))
    out = io.BytesIO()
    img.save(out, "WEBP", quality=80)
    return out.getvalue()


class ThumbnailCache:
    """`thumbnail`, remembered by (content hash, side) up to `max_bytes` of WebP; safe from several threads."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.held = 0
        self.made = 0  # thumbnails computed (the others came from the cache)
        self._kept: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, original: Callable[[], Path], side: int = THUMBNAIL_SIDE) -> bytes:
        """The thumbnail of the photo whose content hash is `sha256`: remembered, or made from the file that
        `original()` gives only then, a private copy of the photo with that hash, which `get` deletes."""
        key = (sha256, side)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        path = original()
        try:
            data = thumbnail(path, side)
        finally:
            path.unlink(missing_ok=True)
        with self._lock:
            self.made += 1
            if key not in self._kept:
                self._kept[key] = data
                self.held += len(data)
            while self.held > self.max_bytes:
                self.held -= len(self._kept.popitem(last=False)[1])
        return data
