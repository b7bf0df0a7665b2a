"""Videos made for finding scenes: photos shown one after another, each with a slow zoom or pan, changing by hard
cuts and by dissolves, written as real H.264 with PyAV, and the truth about them beside each (JSON).

    python benchmarks/make_videos.py --split dev --count 10 --seed 1 --order similar --dissolve 0.5 3 \
        --motion 0.25 --out /tmp/scene-videos/dev
    python benchmarks/make_videos.py --split test --count 10 --seed 2 --out /tmp/scene-videos/test-random

Each photo is shown 3-7 s (the issue's range) with a slow zoom or pan; half the changes are cuts, half dissolves
(films use both; a dissolve's change is its middle). `--order similar` follows each photo with one its captions
describe alike (harder: films cut between shots of one setting). The photos come from a Flickr8k split, so the
thresholds are chosen on dev photos and reported on test photos. `make_video` is also what tests/test_video.py
makes its small videos with.
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLICKR8K = ROOT.parent / "shared" / "data" / "flickr8k"
MOTIONS = ("zoom in", "zoom out", "pan left", "pan right", "pan up", "pan down")


@dataclass
class Shot:
    photo: str  # the photo's name (or what a generated picture shows)
    start: float  # seconds: the change that brings it in (0 for the first)
    end: float  # the change that takes it out (the video's end for the last)
    motion: str


@dataclass
class Change:
    time: float  # a cut's time, a dissolve's middle
    kind: str  # "cut" or "dissolve"
    length: float  # a dissolve's length in seconds (0 for a cut)


def plan(names: Sequence[str], rng: random.Random, seconds: tuple[float, float] = (3.0, 7.0),
         dissolve: tuple[float, float] = (0.5, 2.0), kinds: Sequence[str] = ("cut", "dissolve")
         ) -> tuple[list[Shot], list[Change]]:
    """Shots of the named pictures, each on screen for a time drawn from `seconds`, and the changes between them
    (each kind drawn from `kinds`)."""
    shots, changes, t = [], [], 0.0
    for i, name in enumerate(names):
        end = round(t + rng.uniform(*seconds), 2)
        shots.append(Shot(name, t, end, rng.choice(MOTIONS)))
        if i + 1 < len(names):
            kind = rng.choice(list(kinds))
            changes.append(Change(end, kind, round(rng.uniform(*dissolve), 2) if kind == "dissolve" else 0.0))
        t = end
    return shots, changes


def _box(motion: str, u: float, width: int, height: int, rng_centre: tuple[float, float], amount: float
         ) -> tuple[float, ...]:
    """The part of a width x height canvas on screen at `u` (0 to 1) of a shot: a zoom between all of it and
    1 - `amount` of it, or a pan across `amount` of it."""
    zoom = {"zoom in": 1 - amount * u, "zoom out": 1 - amount + amount * u}.get(motion, 1 - amount)
    w, h = width * zoom, height * zoom
    cx, cy = rng_centre
    if motion.startswith("pan"):
        along = u if motion in ("pan right", "pan down") else 1 - u
        cx = w / 2 + along * (width - w) if motion in ("pan left", "pan right") else width / 2
        cy = h / 2 + along * (height - h) if motion in ("pan up", "pan down") else height / 2
    else:
        cx = min(max(cx * width, w / 2), width - w / 2)
        cy = min(max(cy * height, h / 2), height - h / 2)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def make_video(pictures: Sequence[Image.Image], path: str | Path, shots: Sequence[Shot], changes: Sequence[Change],
               size: tuple[int, int] = (320, 180), fps: int = 25, motion: float = 0.15, grain: float = 0.0,
               gop: int | None = None, codec: str = "libx264", seed: int = 0, options: dict[str, str] | None = None
               ) -> dict:
    """Write the shots (shot i shows pictures[i], stretched to the frame, as the captioner squashes it back) as a
    video at `path` (its container from the suffix); returns the truth written beside it.

    `motion`: how far a shot zooms or pans over its time (a share of the picture).
    `grain` adds a fixed texture of that standard deviation to each picture (the detail of real footage, so the
    bit rate is a real video's); `gop` is the encoder's keyframe interval in frames (default: the codec's own).
    """
    width, height = size
    rng = np.random.default_rng(seed)
    canvases, centres = [], []
    for picture in pictures:
        canvas = np.asarray(picture.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32)
        if grain:
            canvas = canvas + rng.normal(0, grain, canvas.shape).astype(np.float32)
        canvases.append(Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)))
        centres.append(tuple(rng.uniform(0.3, 0.7, 2)))
    half = [0.0] + [c.length / 2 for c in changes] + [0.0]  # half of the dissolve into and out of each shot

    def shot_frame(i: int, t: float) -> Image.Image:
        first, last = shots[i].start - half[i], shots[i].end + half[i + 1]
        u = min(max((t - first) / (last - first), 0.0), 1.0)
        return canvases[i].resize(size, Image.Resampling.BILINEAR,
                                  box=_box(shots[i].motion, u, width, height, centres[i], motion))

    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=fps, options=options or {})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if gop:
        stream.codec_context.gop_size = gop
    duration = shots[-1].end
    for n in range(round(duration * fps)):
        t = n / fps
        i = next(k for k, s in enumerate(shots) if t < s.end or k == len(shots) - 1)
        frame = shot_frame(i, t)
        neighbours = ((i - 1, changes[i - 1] if i > 0 else None), (i + 1, changes[i] if i < len(changes) else None))
        for j, change in neighbours:
            if change and change.kind == "dissolve" and abs(t - change.time) < change.length / 2:
                incoming = (t - change.time) / change.length + 0.5  # 0 -> 1 across the dissolve
                alpha = incoming if j > i else 1 - incoming
                frame = Image.blend(frame, shot_frame(j, t), alpha)
        video_frame = av.VideoFrame.from_image(frame)
        video_frame.pts, video_frame.time_base = n, Fraction(1, fps)
        container.mux(stream.encode(video_frame))
    container.mux(stream.encode())
    container.close()
    truth = {"video": Path(path).name, "size": list(size), "fps": fps, "duration": duration,
             "shots": [asdict(s) for s in shots], "changes": [asdict(c) for c in changes]}
    Path(path).with_suffix(".json").write_text(json.dumps(truth, indent=1))
    return truth


def similar_order(names: list[str], captions: dict[str, set[str]], count: int, rng: random.Random) -> list[str]:
    """`count` of `names`, each followed by the one left that its people described most alike (the most words of
    their captions in common, Jaccard): shots of one setting, as films cut between, harder to tell apart than
    random photos."""
    left, order = list(names), []
    order.append(left.pop(rng.randrange(len(left))))
    while len(order) < count:
        words = captions[order[-1]]
        best = max(range(len(left)), key=lambda i: len(words & captions[left[i]]) / len(words | captions[left[i]]))
        order.append(left.pop(best))
    return order


def caption_words(token_file: Path) -> dict[str, set[str]]:
    """Each photo's caption words (of 3 letters or more) from Flickr8k.token.txt."""
    words: dict[str, set[str]] = {}
    for line in token_file.read_text().splitlines():
        key, _, text = line.partition("\t")
        words.setdefault(key.split("#")[0], set()).update(w for w in text.lower().split() if len(w) > 2)
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flickr8k", default=str(FLICKR8K), help="the Flickr8k folder (Images/ and split files)")
    parser.add_argument("--split", choices=["train", "dev", "test"], default="dev", help="whose photos to show")
    parser.add_argument("--count", type=int, default=10, help="videos to make")
    parser.add_argument("--shots", type=int, default=12, help="photos per video")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--order", choices=["random", "similar"], default="random",
                        help="photos in random order, or each followed by one described alike")
    parser.add_argument("--dissolve", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                        help="a dissolve's length in seconds")
    parser.add_argument("--motion", type=float, default=0.15, help="how far a shot zooms or pans")
    parser.add_argument("--out", required=True, help="the folder to write VIDEO.mp4 and VIDEO.json into")
    args = parser.parse_args()

    root = Path(args.flickr8k)
    names = (root / f"Flickr_8k.{args.split}Images.txt").read_text().split()
    rng = random.Random(args.seed)
    rng.shuffle(names)
    if args.order == "similar":
        names = similar_order(names, caption_words(root / "Flickr8k.token.txt"), args.count * args.shots, rng)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    formats = [((640, 360), 25), ((854, 480), 30), ((640, 480), 24), ((1280, 720), 25)]
    for v in range(args.count):
        chosen = names[v * args.shots:(v + 1) * args.shots]
        shots, changes = plan(chosen, rng, dissolve=tuple(args.dissolve))
        size, fps = formats[v % len(formats)]
        pictures = [Image.open(root / "Images" / name) for name in chosen]
        truth = make_video(pictures, out / f"video-{args.seed}-{v:02d}.mp4", shots, changes, size, fps,
                           args.motion, grain=4.0, seed=args.seed * 1000 + v)
        print(f"{truth['video']}: {size[0]}x{size[1]} at {fps} fps, {truth['duration']:.1f} s, "
              f"{sum(c['kind'] == 'cut' for c in truth['changes'])} cuts, "
              f"{sum(c['kind'] == 'dissolve' for c in truth['changes'])} dissolves")


if __name__ == "__main__":
    main()
