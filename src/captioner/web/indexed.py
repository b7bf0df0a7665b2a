"""A gallery photo's file, served (or captioned, or shrunk) only while it is the one the gallery indexed.

Between indexing and a request, the file at a photo's path may have been
edited, or replaced by a folder, a pipe, or a symbolic link to another file.
Size and modification time prove little on their own: the owner of a file sets
its time, so the target of such a link can be made to match the recorded ones.
So:

- the path is opened once, following links as the indexer did but never
  waiting on a pipe, and the open file is checked: a regular file of the size
  and modification time the catalogue recorded (404 if it is gone, 410 if not);
- what is read from that open file is hashed, and used only if its SHA-256 is
  the catalogue's (410 if not): the photo is streamed after a first reading
  checked it; a thumbnail or a caption is made from a private copy checked
  as it was written, so no later swap of the path can change what they read.

A cached thumbnail needs only the first check: it was made from the indexed content.

A video is served in the byte ranges a player asks for, many requests per
scene played: its whole file is hashed at the first request, and later ones
skip the hash while the open file is the very one hashed (`Verified`: the same
device, inode, size, modification time and change time; no one can set a
file's change time, and every write moves it).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from fastapi import HTTPException

from .uploads import CHUNK

if TYPE_CHECKING:
    from ..gallery import Match

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
"""Open for reading without waiting: a pipe (or a device) opens at once and is then refused as not a file."""


def changed(match: Match) -> HTTPException:
    return HTTPException(410, f"Photo {match.id}'s file {match.path.name} is no longer the one the gallery indexed; "
                              "index its folder again (captioner index) to show it.")


def open_indexed(match: Match) -> BinaryIO:
    """The photo's file, open, if it is a regular file of the size and modification time the gallery recorded.

    Raises 404 when it is gone, 410 when it is anything else (the caller closes the file).
    """
    try:
        fd = os.open(match.path, _FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise HTTPException(404, f"Photo {match.id}'s file {match.path.name} is gone from the disk.") from None
    except OSError:  # no longer readable, a loop of links, ...
        raise changed(match) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (match.indexed.size, match.indexed.mtime_ns):
        os.close(fd)
        raise changed(match)
    return os.fdopen(fd, "rb")


def checked_chunks(match: Match) -> Iterator[bytes]:
    """The photo file's bytes, a chunk at a time, once a first reading of the open file gave the indexed hash.

    Raises as `open_indexed` does, or 410 for other content, before the first chunk.
    """
    f = open_indexed(match)
    try:
        if _sha256(f) != match.indexed.sha256:
            raise changed(match)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return _chunks(f)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while chunk := f.read(CHUNK):
            yield chunk


class Verified:
    """Open files whose content was hashed and found to be the indexed one, by their identity (the last
    `kept`); safe from several threads."""

    def __init__(self, kept: int = 4096):
        self.kept = kept
        self.hashed = 0  # files hashed (the others were known)
        self._known: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, match: Match) -> BinaryIO:
        """The item's file, open, checked as `open_indexed` does and to hold the indexed content (raises the same)."""
        f = open_indexed(match)
        try:
            st = os.fstat(f.fileno())
            identity = (match.indexed.sha256, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            with self._lock:
                known = identity in self._known
            if not known:
                self.hashed += 1
                if _sha256(f) != match.indexed.sha256:
                    raise changed(match)
                with self._lock:
                    self._known[identity] = None
                    while len(self._known) > self.kept:
                        self._known.popitem(last=False)
        except BaseException:
            f.close()
            raise
        return f


RANGE = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a Range header asks of a file of `size` bytes; None for the whole file (no header,
    another unit, or several ranges, which may be answered whole). Raises 416 for a range the file cannot
    satisfy: beyond its end, empty, or malformed."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    found = RANGE.fullmatch(spec)
    first, last = (found[1], found[2]) if found else ("", "")
    if first:  # bytes=FIRST- or bytes=FIRST-LAST
        first, last = int(first), int(last) if last else size - 1
        if first <= last and first < size:
            return first, min(last, size - 1)
    elif last and int(last) > 0 and size > 0:  # bytes=-N: the last N bytes
        return max(size - int(last), 0), size - 1
    raise HTTPException(416, f"The range {header!r} is not within the file's {size} bytes: ask for bytes=FIRST-LAST "
                             "with FIRST below the size, bytes=FIRST-, or bytes=-COUNT.",
                        headers={"Content-Range": f"bytes */{size}"})


def span(f: BinaryIO, first: int, last: int) -> Iterator[bytes]:
    """Bytes `first` to `last` (both included) of the open file, a chunk at a time; the file is closed after."""
    with f:
        f.seek(first)
        left = last - first + 1
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


def private_copy(match: Match, folder: Path) -> Path:
    """A new private file (mode 0600) in `folder` holding the photo file's bytes, if they have the indexed hash.

    Raises as `open_indexed` does, or 410 for other content (and leaves no file); the caller deletes the copy.
    """
    fd, name = tempfile.mkstemp(prefix="photo-", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out, open_indexed(match) as f:
            digest = _sha256(f, copy_to=out)
        if digest != match.indexed.sha256:
            raise changed(match)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _sha256(f: BinaryIO, copy_to: BinaryIO | None = None) -> str:
    """The hex SHA-256 of the rest of `f`, a chunk at a time, each chunk also written to `copy_to` if given."""
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return digest.hexdigest()
