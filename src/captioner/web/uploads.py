"""What an upload must be: small enough (413), of a photo type (415); and where it waits to be captioned.

The multipart body is parsed here, as it arrives, straight into a private file
in the server's upload folder: a form parser would spool it to the system's
temporary folder, where other users' processes and backups may look.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..data.images import PHOTO_FORMATS

DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
CHUNK = 1024 * 1024
MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond the photo itself (boundaries and part headers)."""
FIELD = "file"
"""The form field that holds the photo."""

Image.init()
PHOTO_TYPES: frozenset[str] = frozenset(Image.MIME[f] for f in PHOTO_FORMATS)
"""The media types of the photo formats captioner reads."""
UNKNOWN_TYPES = frozenset({"", "application/octet-stream"})
"""Types that say nothing (a browser's guess for an unknown suffix): the photo's bytes decide."""
NOT_MULTIPART = "Send the photo as multipart/form-data, in the form field `file`."
NO_PHOTO = "Send the photo in the form field `file` (multipart/form-data)."

UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": [FIELD], "properties": {FIELD: {
        "type": "string", "format": "binary", "minLength": 1,
        "description": "the photo: a JPEG, PNG, WebP, GIF, BMP or TIFF file"}}},
    "encoding": {FIELD: {"contentType": ", ".join(sorted(PHOTO_TYPES | {"application/octet-stream"}))}}}}}
"""The upload's request body in the OpenAPI schema (the route reads the body itself)."""


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


@dataclass
class Upload:
    path: Path  # the private file (mode 0600) holding the photo; the caller deletes it
    name: str  # the file name the client gave, for messages


class _PhotoPart:
    """python-multipart's callbacks for one body: the headers of the photo's part, then its bytes as they come."""

    def __init__(self) -> None:
        self.header, self.value = b"", b""
        self.headers: dict[bytes, bytes] = {}
        self.found = False  # the photo's part has begun
        self.name = "the photo"  # its file name, once found
        self.inside = False  # the parser is in the photo's part now
        self.received: list[bytes] = []  # its bytes since they were last taken

    def callbacks(self) -> dict:
        return {"on_part_begin": self.headers.clear, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header.lower()] = self.value
        self.header, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.inside = not self.found and options.get(b"name") == FIELD.encode()
        if self.inside:
            self.found = True
            self.name = display_name(options.get(b"filename", b"").decode("utf-8", "replace"))
            check_type(self.headers.get(b"content-type", b"").decode("latin-1"), self.name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.inside:
            self.received.append(data[start:end])

    def on_part_end(self) -> None:
        self.inside = False

    def take(self) -> list[bytes]:
        taken, self.received = self.received, []
        return taken


async def receive_upload(request: Request, folder: Path, limit: int) -> Upload:
    """Read the multipart body's `file` part, as it arrives, into a new private file (mode 0600) in `folder`.

    Raises 400 for a body that is not multipart, 422 for one without the photo,
    415 as soon as the photo's part declares a type that is not a photo, and 413
    (naming its size) for a photo above `limit` bytes; then no file is left.
    """
    media, options = parse_options_header(request.headers.get("content-type", ""))
    if media != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(400, NOT_MULTIPART)
    part = _PhotoPart()
    parser = MultipartParser(options[b"boundary"], part.callbacks())
    fd, name = tempfile.mkstemp(prefix="upload-", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            size = 0
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except FormParserError:
                    raise HTTPException(400, NOT_MULTIPART) from None
                data = b"".join(part.take())
                size += len(data)
                if data and size <= limit:
                    await run_in_threadpool(f.write, data)
            if size > limit:  # counted to the end, which the body limit keeps near
                raise too_large(limit, size)
        if not part.found:
            raise HTTPException(422, NO_PHOTO)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Upload(path, part.name)


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
