"""What an upload must be: small enough (413), of a photo type (415); and where it waits to be captioned."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from captioner.images import PHOTO_FORMATS

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
CHUNK = 1024 * 1024
MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond the photo itself (boundaries and part headers)."""

Image.init()
PHOTO_TYPES: frozenset[str] = frozenset(Image.MIME[f] for f in PHOTO_FORMATS)
"""The media types of the photo formats captioner reads."""
UNKNOWN_TYPES = frozenset({"", "application/octet-stream"})
"""Types that say nothing (a browser's guess for an unknown suffix): the photo's bytes decide."""


def mebibytes(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def too_large(limit: int, size: int | None = None) -> HTTPException:
    what = f"The photo is {mebibytes(size)}," if size is not None else "The upload is"
    return HTTPException(413, f"{what} more than the {mebibytes(limit)} limit; send a smaller photo "
                              "(shrink or export it again).")


def check_type(content_type: str | None, filename: str) -> None:
    """Refuse (415) an upload whose declared media type is not a photo captioner reads."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in UNKNOWN_TYPES or media in PHOTO_TYPES:
        return
    raise HTTPException(415, f"{filename} is {media}, not a photo; send a JPEG, PNG, WebP, GIF, BMP or TIFF.")


def display_name(filename: str | None) -> str:
    """The upload's file name as the client gave it, without folders, for messages."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    return name[:120] or "the photo"


def save_upload(upload: BinaryIO, folder: Path, limit: int) -> Path:
    """Copy an upload, a chunk at a time, to a new private file (mode 0600) in `folder` for the worker to read.

    Raises the 413 of `too_large` (and leaves no file) when it holds more than `limit` bytes.
    """
    fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            size = 0
            while chunk := upload.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise too_large(limit, upload.seek(0, os.SEEK_END))
                f.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


class UploadLimit:
    """ASGI middleware: refuse request bodies above `limit` (plus multipart overhead) with 413.

    A declared Content-Length above it is refused before any byte is read; a
    body without one (chunked) is counted as it arrives and cut off there, so a
    huge upload never fills memory or disk.
    """

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        allowed = self.limit + MULTIPART_SLACK
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > allowed:
            await JSONResponse({"detail": too_large(self.limit).detail}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > allowed:
                raise too_large(self.limit)
            return message

        await self.app(scope, counted, send)

