"""`captioner video`: a caption for every scene of a video file, a stream or a camera."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import CaptionerError
from .options import device_option, positive_int, positive_number, ray_options, ray_wanted, tags_line

log = logging.getLogger("captioner.cli.video")

EXAMPLES = """\
examples:
  captioner video holiday.mp4                    a line per scene: 00:00:04.0 -> 00:00:09.5  a caption
  captioner video film.mkv --vtt film.vtt --srt film.srt --frames stills/
  captioner video recordings/ --json             every video in a folder, one JSON object per scene
  captioner video archive/ --ray --json          the same on a Ray cluster, a file per task
  captioner video rtsp://camera.local/stream     a live stream: each scene as it ends, Ctrl+C to stop
  captioner video /dev/video0 --every 2          a camera (Linux; avfoundation:0 on macOS, dshow:video=NAME
                                                 on Windows)
"""


def add(sub: argparse._SubParsersAction) -> None:
    """Add the command to the `captioner` parser."""
    p = sub.add_parser("video", help="caption a video, stream or camera scene by scene",
                       description=textwrap.fill(
                           "Caption videos scene by scene: a frame is sampled every --every seconds and encoded, a "
                           "new scene starts where the picture changes (a cut or a dissolve), and each scene is "
                           "captioned once, from its most typical frame, with the tags and confidence photos get "
                           "(pip install 'captioner[video]'). A file is read to its end; a camera, or a stream that "
                           "never ends, is live (see --live). Exit status: 0 when every source was read whole, 1 "
                           "when any could not be (the scenes before the place it broke are kept), 2 on a usage "
                           "error, 130 after Ctrl+C.", 79),
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video files (any container and codec FFmpeg "
                   "reads: mp4, mkv, webm, mov, avi; H.264, HEVC, VP9, AV1, ...) or folders of them, stream URLs "
                   "(rtsp://, rtmp://, http(s):// including HLS, srt://, udp://) or cameras (/dev/video0, or "
                   "v4l2:DEVICE, avfoundation:INDEX, dshow:video=NAME)")
    p.add_argument("--model", help="a model folder written by `captioner train` (default: the shipped model)")
    p.add_argument("--every", type=positive_number, default=1.0, metavar="SECONDS",
                   help="seconds between the frames looked at (default 1): a scene's start and end are found to "
                   "within half of it, and a shot seen in one frame only, or for less than 2 s, joins the scene "
                   "after it")
    p.add_argument("--beam", type=positive_int, default=None,
                   help="beam width (default: the model's, 3 for the shipped one)")
    p.add_argument("--json", action="store_true", help='one JSON object per scene, in order: {"source", "start", '
                   '"end" (seconds), "caption", "confidence", "tags", "score", "keyframe" (the time of the frame '
                   'captioned), and "frame" with --frames}, or {"source", "error"}; "caption" is the model\'s '
                   'sentence, which the plain output and the subtitles say with its doubt ("probably ...", "I am not '
                   'sure; it may be ...") when its confidence is low')
    p.add_argument("--vtt", metavar="FILE", help="write WebVTT subtitles, a cue per scene (one SOURCE)")
    p.add_argument("--srt", metavar="FILE", help="write SubRip subtitles, a cue per scene (one SOURCE)")
    p.add_argument("--frames", metavar="DIR", help="save each scene's captioned frame as a JPEG in DIR "
                   "(NAME.scene-0001.jpg, ...)")
    p.add_argument("--live", action="store_true", help="treat a stream URL as live even if it declares an end: "
                   "a drop or an end is reopened (waiting 1 s, then longer), until Ctrl+C, which captions the "
                   "scene so far and ends (the default for cameras and for streams with no end; files are read "
                   "once)")
    p.add_argument("--tags", action="store_true", help="also show what the encoder's ImageNet classifier "
                   "recognises in each scene")
    device_option(p)
    ray_options(p, "caption video files, a file per task,")
    p.set_defaults(run=cmd_video)


@contextlib.contextmanager
def stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """While inside, the first Ctrl+C sets `stop` (the scene so far is captioned, files are finished); a second
    one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)
        log.warning("stopping: captioning the scene so far (Ctrl+C again to quit at once)")

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def frame_stem(source: str) -> str:
    """A file name for a source's frames: the file's or URL path's last part, without its suffix."""
    last = [part for part in re.split(r"[/\\:?=&]", source) if part]
    return re.sub(r"[^\w.-]", "_", Path(last[-1] if last else "video").stem) or "video"


def scenes_here(args: argparse.Namespace, names: list[str], stop: threading.Event) -> Iterator:
    """The scenes of each source in turn, found on this machine, as distributed.video.Found; a source that
    cannot be read gives its VideoError after the scenes before it. Ends after the source `stop` was set in."""
    import torch

    from ..captioning import Captioner
    from ..video.scenes import scenes
    from ..video.sources import VideoError, parse_source

    # One thread for the encoder, the other cores for FFmpeg's decoder: torch's default, a thread per core whose
    # idle threads spin, slowed a 720p video several times over beside the decoder (BENCHMARKS.md, Video).
    torch.set_num_threads(1)
    captioner = Captioner.load(args.model, device=args.device)

    def found() -> Iterator:
        for index, name in enumerate(names):
            try:
                source = parse_source(name)
                if args.live and source.kind == "file":
                    raise VideoError(f"{name} is a file, which is read to its end: --live is for streams and "
                                     "cameras")
                for scene in scenes(captioner, source, args.every, True if args.live else None, args.beam,
                                    keyframes=bool(args.frames), stop=stop):
                    yield index, scene, scene.jpeg() if args.frames else None
            except VideoError as e:
                yield index, e, None
            if stop.is_set():
                return
    return found()


def scenes_on_cluster(args: argparse.Namespace, names: list[str]) -> Iterator:
    """The scenes of each file, found on Ray (a file per task), as `scenes_here` gives them; streams and cameras
    are refused, since they run until stopped."""
    from ..distributed.video import scenes_on_ray
    from ..video.sources import VideoError, parse_source

    if args.live:
        raise CaptionerError("--ray captions video files, a file per task, and --live is for streams and cameras, "
                             "which run here until stopped: leave out --ray or --live")
    for name in names:
        with contextlib.suppress(VideoError):  # a file that cannot be read: its task says so, in its place
            source = parse_source(name)
            if source.remote:
                raise CaptionerError(f"{name} is a {source.kind}, which runs until stopped, and --ray "
                                     "captions video files, a file per task: leave out --ray for it")
    return scenes_on_ray(names, args.model, args.every, args.beam, bool(args.frames), args.ray_actors,
                         args.ray_address)


def frame_stems(names: list[str]) -> list[str]:
    """A file name stem for each source's frames, told apart when two share a name (a/clip.mp4, b/clip.mp4)."""
    stems: list[str] = []
    for name in names:
        stem, n = frame_stem(name), 1
        while stem in stems:
            n += 1
            stem = f"{frame_stem(name)}-{n}"
        stems.append(stem)
    return stems


def cmd_video(args: argparse.Namespace) -> int:
    from ..files import atomic_path
    from ..video.sources import VideoError, clock, expand_sources
    from ..video.subtitles import SubtitleFile

    names = expand_sources(args.sources)
    ray = ray_wanted(args)
    if (args.vtt or args.srt) and len(names) > 1:
        raise CaptionerError(f"--vtt and --srt write one video's subtitles, and {len(names)} sources were given: "
                             "run once per source")
    if args.frames:
        try:
            Path(args.frames).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CaptionerError(f"cannot make the --frames folder {args.frames} ({e.strerror}): give a folder "
                                 "you may write to") from None
    stop = threading.Event()
    found = scenes_on_cluster(args, names) if ray else scenes_here(args, names, stop)
    stems = frame_stems(names)
    failed = 0
    # On Ray, Ctrl+C interrupts at once (the scenes so far are printed and in the subtitles): the files in flight
    # are on the cluster, and there is no scene so far to caption here.
    with contextlib.nullcontext() if ray else stop_on_ctrl_c(stop), contextlib.ExitStack() as files:
        subtitles = [files.enter_context(SubtitleFile(path, kind))
                     for kind, path in (("vtt", args.vtt), ("srt", args.srt)) if path]
        for index, scene, jpeg in found:
            name = names[index]
            if isinstance(scene, VideoError):
                failed += 1
                if args.json:
                    print(json.dumps({"source": name, "error": str(scene)}, ensure_ascii=False), flush=True)
                else:
                    print(f"captioner: error: {scene}", file=sys.stderr, flush=True)
                continue
            record = scene.to_json()
            if args.frames:
                path = Path(args.frames) / f"{stems[index]}.scene-{scene.number:04d}.jpg"
                with atomic_path(path) as tmp:
                    tmp.write_bytes(jpeg)
                record["frame"] = str(path)
            for s in subtitles:
                s.add(scene.start, scene.end, scene.said)
            if args.json:
                print(json.dumps(record, ensure_ascii=False), flush=True)
                continue
            where = f"{name}: " if len(names) > 1 else ""
            print(f"{where}{clock(scene.start)} -> {clock(scene.end)}  {scene.said}", flush=True)
            if args.tags:
                print(tags_line(scene.caption.tags), flush=True)
        if stop.is_set():
            print("captioner: stopped (Ctrl+C); the scenes so far are above"
                  + (" and in the subtitles" if subtitles else ""), file=sys.stderr)
            return 130
    return 1 if failed else 0
