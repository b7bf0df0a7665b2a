"""Where video comes from, and the frames sampled from it: files, stream URLs and cameras, read through PyAV.

`samples(source, every, size)` yields a `Sample` every `every` seconds of video: the frame's time and its pixels
squashed to the encoder's input, the whole frame as photos are. It decodes only what it needs:

- Non-reference frames are never decoded (`skip_frame = "NONREF"`: the B-frames of most H.264, about half
  its frames); a sample is the first frame at or after its time that the decoder gives, a frame or two late at
  most.
- Packets are kept undecoded until a sample is due; a keyframe throws away those before it, so a stretch
  with no sample in it (a keyframe interval shorter than `every`) is never decoded at all. Reading on through
  the packets (never seeking) serves files and streams alike, and costs little: demuxing is cheap.
- Each sampled frame is shrunk by FFmpeg (area averaging) to twice the encoder's input, as a JPEG photo is
  decoded at reduced scale, then squashed by `data.images.to_pixels` like every photo.

A live source (a camera, or a stream with no end; `--live`) that drops or ends is opened again, waiting 1 s,
then twice as long each time up to BACKOFF_MAX, said once per drop; a `Break` marks where the picture stopped.
A stream that declared no end and comes back declaring one (a live HLS playlist that got its end) is over.
A source that cannot be opened at all, or a file that breaks partway, raises `VideoError`, one sentence (a
file's samples before the break are yielded first).
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error
import numpy as np
from PIL import Image

from ..data.images import VIDEO_SUFFIXES, clock, files_in, to_pixels
from ..errors import CaptionerError

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp")
CAMERA_FORMATS = {"v4l2": "Linux", "avfoundation": "macOS", "dshow": "Windows"}
"""FFmpeg's camera inputs, written FORMAT:DEVICE (v4l2:/dev/video0, avfoundation:0, dshow:video=NAME)."""

OPEN_TIMEOUT = 10.0  # seconds to reach a stream or camera before giving up on it
READ_TIMEOUT = 10.0  # seconds without data before a stream counts as dropped
BACKOFF_MAX = 30.0  # the longest wait between attempts to reopen a dropped live source
MAX_PENDING = 256  # packets kept undecoded at most (a source that marks no keyframes is then decoded as it comes)
FILE_END_SLACK = 1.0  # a file whose packets stop this much before its declared duration was cut short
GAP = 1.0  # seconds of missing packets that mean broken data was skipped


class VideoError(CaptionerError):
    """A source that cannot be read, or stopped partway: one sentence naming it, where, and what to do."""


@dataclass(frozen=True)
class Source:
    """A video source as given on the command line, and how FFmpeg opens it."""

    name: str  # as given
    url: str  # what FFmpeg opens: a path, a URL or a device
    kind: str  # "file", "stream" or "camera"
    format: str | None = None  # the camera input (v4l2, avfoundation, dshow); None: FFmpeg finds out

    @property
    def remote(self) -> bool:
        return self.kind != "file"


@dataclass
class Sample:
    """One sampled frame."""

    time: float  # seconds from the source's first frame (live: since watching began)
    pixels: np.ndarray  # uint8 [S, S, 3]: the whole frame squashed to the encoder's input
    frame: av.VideoFrame | None  # the decoded frame, kept when asked for (a scene's keyframe is saved from it)


@dataclass
class Break:
    """The picture stops at `time` (seconds, as Sample.time): the source ended, broke, or dropped (a live one is
    then opened again)."""

    time: float


def parse_source(text: str | os.PathLike[str]) -> Source:
    """What `text` names: a camera (/dev/videoN, or FORMAT:DEVICE), a stream URL, or a file (checked to exist)."""
    text = os.fspath(text)
    if text.startswith("/dev/video"):
        return Source(text, text, "camera", "v4l2")
    prefix, _, device = text.partition(":")
    if prefix in CAMERA_FORMATS and device and not device.startswith("//"):
        return Source(text, device, "camera", prefix)
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if scheme and scheme[1].lower() != "file":
        if scheme[1].lower() not in STREAM_SCHEMES:
            raise VideoError(f"{text}: captioner does not read {scheme[1]}:// sources; give a video file, a stream "
                             f"URL ({', '.join(s + '://' for s in STREAM_SCHEMES[:6])}) or a camera")
        return Source(text, text, "stream")
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.exists():
        raise VideoError(f"{text} does not exist (check the path and its spelling)")
    if path.is_dir():
        raise VideoError(f"{text} is a folder with no video files in it (name a video file)")
    return Source(text, str(path), "file")


def expand_sources(texts: Iterable[str]) -> list[str]:
    """The sources named, folders replaced by the video files inside them (recursively, sorted, hidden ones
    skipped); a folder with none is kept, for `parse_source` to report."""
    out: list[str] = []
    for text in texts:
        path = Path(text).expanduser()
        found = files_in(path, VIDEO_SUFFIXES) if "://" not in text and path.is_dir() else []
        out += [str(p) for p in found] or [text]
    return out


def _open_error(source: Source, e: Exception) -> VideoError:
    """The sentence for a source that could not be opened."""
    why = (getattr(e, "strerror", None) or str(e)).strip().rstrip(".")
    if source.kind == "camera":
        if isinstance(e, (FileNotFoundError, av.error.FileNotFoundError)):
            return VideoError(f"there is no camera at {source.url} ({why}): check that it is plugged in"
                              + (" (ls /dev/video* lists the cameras)" if source.format == "v4l2" else ""))
        return VideoError(f"cannot open the camera {source.name} ({why}): check that it is plugged in and that "
                          "no other program is using it")
    if source.kind == "stream":
        if isinstance(e, av.error.ExitError):
            why = f"nothing came within {OPEN_TIMEOUT:.0f} s"
        return VideoError(f"cannot open the stream {source.name} ({why}): check the address and that the stream "
                          "is on")
    if isinstance(e, (PermissionError, av.error.PermissionError)):
        return VideoError(f"{source.name} cannot be read: permission denied (check the file's permissions)")
    return VideoError(f"{source.name} is not a video FFmpeg can read, or is damaged ({why}): check that it is a "
                      "whole video file")


def open_video(source: Source) -> tuple[av.container.InputContainer, av.VideoStream]:
    """The opened container and its first video stream, ready to decode; VideoError (one sentence) if not."""
    options = {"rtsp_transport": "tcp"} if source.url.startswith("rtsp") else {}
    try:
        container = av.open(source.url, format=source.format, options=options,
                            timeout=(OPEN_TIMEOUT, READ_TIMEOUT) if source.remote else None)
    except (av.error.FFmpegError, OSError) as e:
        raise _open_error(source, e) from None
    if not container.streams.video:
        others = sorted({s.type for s in container.streams})
        container.close()
        raise VideoError(f"{source.name} has no video stream (it holds {' and '.join(others) or 'nothing'}): give "
                         "a video")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg knows no decoder for it
        container.close()
        raise VideoError(f"{source.name}: its video is in a codec that captioner's FFmpeg cannot decode; convert it "
                         "to H.264 first, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
    stream.codec_context.skip_frame = "NONREF"
    stream.thread_type = "AUTO"
    return container, stream


def picture(frame: av.VideoFrame, shrunk: av.VideoFrame | None = None) -> Image.Image:
    """The frame (or its `shrunk` copy) as an RGB image, turned upright as its video says it is shown (a phone
    held upright records sideways, as a photo's EXIF orientation says)."""
    image = (shrunk or frame).to_image()
    return image.rotate(frame.rotation, expand=True) if frame.rotation else image


def _shrink(frame: av.VideoFrame, size: int) -> np.ndarray:
    """The frame as `to_pixels` makes a photo: FFmpeg first shrinks a large frame to twice `size` (area
    averaging, and the YUV -> RGB conversion in the same pass), then the one bicubic squash to size x size."""
    shrunk = None
    if frame.width > 2 * size and frame.height > 2 * size:
        shrunk = frame.reformat(width=2 * size, height=2 * size, format="rgb24", interpolation="AREA")
    return to_pixels(picture(frame, shrunk), size)


@dataclass
class _Reading:
    """How far one opening of a source got, on the stream's own clock (seconds)."""

    origin: float | None = None  # its first frame's time
    reached: float | None = None  # where its packets reached (the end of the latest frame shown)
    damaged: list[float] = field(default_factory=list)  # where packets were missing or broken (and it went on)


def _connection(container: av.container.InputContainer, stream: av.VideoStream, every: float, size: int,
                keep: bool, stop: threading.Event, reading: _Reading
                ) -> Iterator[tuple[float, np.ndarray, av.VideoFrame | None]]:
    """(the frame's own time, pixels, the frame if kept) every `every` seconds of one opened source, decoding as
    little as it can (see the module's note); `reading` follows how far it got."""
    base = stream.time_base
    due: float | None = None  # the next sample's time, on the stream's clock
    pending: list[av.Packet] = []  # packets since the last one decoded, not decoded yet
    decoded: float | None = None  # where the packets reached in decoding order (a jump: packets lost)
    last = 0.0

    def decode(packets: list[av.Packet]) -> Iterator[tuple[float, np.ndarray, av.VideoFrame | None]]:
        nonlocal due, last
        for packet in packets:
            try:
                frames = stream.codec_context.decode(packet)
            except av.error.InvalidDataError:  # a broken packet: the frames after it may still decode
                reading.damaged.append(last)
                continue
            for frame in frames:
                t = frame.time
                if t is None or math.isnan(t):  # a frame with no time of its own: the one after the last
                    t = last + 1 / float(stream.average_rate or 25)
                last = t
                if frame.is_corrupt:
                    reading.damaged.append(t)
                if due is None:
                    due = reading.origin = t
                if t + 1e-6 < due:
                    continue
                while due <= t + 1e-6:
                    due += every
                yield t, _shrink(frame, size), frame if keep else None

    for packet in container.demux(stream):  # ends with an empty packet, which flushes the decoder
        if stop.is_set():
            return
        stamp = packet.dts if packet.dts is not None else packet.pts
        if stamp is not None:
            length = packet.duration or 0
            if decoded is not None and float(stamp * base) > decoded + GAP:
                reading.damaged.append(decoded)  # packets lost: the demuxer skipped broken data
            end = float((stamp + length) * base)
            decoded = max(end, decoded or end)
            shown = float(((stamp if packet.pts is None else packet.pts) + length) * base)  # B-frames: shown later
            reading.reached = max(shown, reading.reached or shown)
        if packet.is_keyframe:
            pending.clear()
        pending.append(packet)
        if due is None or stamp is None or float(stamp * base) >= due or len(pending) >= MAX_PENDING:
            yield from decode(pending)
            pending.clear()


def samples(source: Source, every: float, size: int, live: bool | None = None, keep: bool = False,
            stop: threading.Event | None = None) -> Iterator[Sample | Break]:
    """A `Sample` every `every` seconds of `source` (pixels size x size; each frame too with `keep`), in order,
    and a `Break` where the picture stops.

    `live` (default: a camera, or a stream that declares no duration): a drop or an end is a `Break`, and the
    source is opened again (waiting longer each time) until `stop` is set; only the first opening may fail.
    Times are seconds from the first frame; after a reopening, they go on from the time elapsed since it.
    Not live: the source is read to its end; VideoError if it cannot be opened, or (after the samples before and
    their `Break`) if it breaks partway or a file ends before the duration it declares.
    """
    stop = stop or threading.Event()
    began = None  # the monotonic clock at the first frame
    last = 0.0  # the latest time given
    wait = 1.0  # before the next attempt to reopen a dropped live source: doubles up to BACKOFF_MAX
    dropped = False  # a drop was said, and no picture has come since
    endless = None  # the first opening declared no duration (a live stream, or an HLS playlist still growing)
    while not stop.is_set():
        try:
            container, stream = open_video(source)
        except VideoError:
            if began is None:
                raise
            log.debug(f"{source.name}: not back yet; trying again in {wait:.0f} s")
            stop.wait(wait)
            wait = min(BACKOFF_MAX, 2 * wait)
            continue
        if endless is None:
            endless = not container.duration
        elif endless and container.duration:  # now a whole recording (a live HLS playlist that got its end)
            container.close()
            log.info(f"{source.name}: the stream is over (it is now a recording with an end)")
            return
        if live is None:
            live = source.kind == "camera" or (source.kind == "stream" and endless)
        offset = last if began is None else max(last, time.monotonic() - began)  # a live source runs in real time
        reading, problem, declared = _Reading(), "", None
        if container.duration:
            declared = ((container.start_time or 0) + container.duration) / av.time_base
        try:
            with container:
                for t, pixels, frame in _connection(container, stream, every, size, keep, stop, reading):
                    began = began or time.monotonic()
                    if dropped:
                        log.info(f"{source.name}: reopened at {clock(offset)}; the scenes go on")
                        dropped, wait = False, 1.0
                    last = offset + t - reading.origin
                    yield Sample(last, pixels, frame)
        except (av.error.FFmpegError, OSError) as e:
            problem = (getattr(e, "strerror", None) or str(e)).strip().rstrip(".")
            if isinstance(e, av.error.ExitError):
                problem = f"no data for {READ_TIMEOUT:.0f} s"
        stopped = last
        if reading.origin is not None:
            stopped = max(last, offset + (reading.reached or 0.0) - reading.origin)
            yield Break(stopped)
            damage = sorted(reading.damaged)
            places = [t for i, t in enumerate(damage) if i == 0 or t > damage[i - 1] + GAP]  # nearby damage: one place
            if places:
                more = len(places) - 1
                log.warning(f"{source.name}: the video is damaged at {clock(offset + places[0] - reading.origin)}"
                            + (f" and {more} more place{'s' * (more > 1)}" if more else "")
                            + ": frames there are missing or broken, so the scenes around it may be wrong")
        if stop.is_set():
            return
        if began is None:
            raise VideoError(f"{source.name} gave no picture before it "
                             f"{'broke (' + problem + ')' if problem else 'ended'}: "
                             + ("check that the stream is on" if source.remote else "check that it is a whole video"))
        if live:
            if reading.origin is not None:  # said once a drop; an opening that gave no picture is one more try
                log.warning(f"{source.name}: the stream dropped at {clock(stopped)} ({problem or 'it ended'}); "
                            "opening it again (waiting 1 s, then longer each time)")
                dropped = True
            stop.wait(wait)
            wait = min(BACKOFF_MAX, 2 * wait)
            continue
        if problem:
            raise VideoError(f"{source.name} is damaged and could not be read after {clock(last)} ({problem}); "
                             "the scenes before are kept: copy or download the file again")
        if declared and reading.reached is not None and reading.reached + FILE_END_SLACK < declared:
            raise VideoError(f"{source.name} ends early, at {clock(reading.reached - reading.origin)} of the "
                             f"{clock(declared - reading.origin)} it declares (truncated); the scenes before are "
                             "kept: copy or download the file again")
        return
