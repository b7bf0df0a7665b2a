"""Subtitle files, a cue per scene: WebVTT (.vtt, for the web) and SubRip (.srt, for players).

A file is opened with its header before the first scene and each cue is written and flushed as its scene ends,
so the file is whole at every moment: a live run stopped with Ctrl+C, or a video that breaks partway, leaves
valid subtitles of the scenes so far.
"""
from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..errors import CaptionerError

KINDS = ("vtt", "srt")


def timestamp(seconds: float, kind: str) -> str:
    """00:01:02.500 (WebVTT) or 00:01:02,500 (SubRip)."""
    ms = round(max(seconds, 0.0) * 1000)
    text = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
    return text.replace(".", ",") if kind == "srt" else text


class SubtitleFile:
    """A subtitle file being written, a cue at a time."""

    def __init__(self, path: str | Path, kind: str):
        if kind not in KINDS:
            raise ValueError(f"subtitles are {' or '.join(KINDS)}, not {kind}")
        self.path, self.kind, self.cues = Path(path), kind, 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO = open(self.path, "w", encoding="utf-8", newline="\n")
        except OSError as e:
            raise CaptionerError(f"cannot write the subtitles {path} ({e.strerror or e}): give a file you may write "
                                 "to") from None
        if kind == "vtt":
            self._write("WEBVTT\n\n")

    def add(self, start: float, end: float, text: str) -> None:
        """One cue, shown from `start` to `end` seconds."""
        self.cues += 1
        number = f"{self.cues}\n" if self.kind == "srt" else ""
        # A cue's text may not hold a blank line, nor (WebVTT) "-->"; captions never do, but a model's words might.
        text = " ".join(text.split()).replace("-->", "->")
        self._write(f"{number}{timestamp(start, self.kind)} --> {timestamp(end, self.kind)}\n{text}\n\n")

    def _write(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as e:
            raise CaptionerError(f"cannot write the subtitles {self.path} ({e.strerror or e}): check the disk") \
                from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SubtitleFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
