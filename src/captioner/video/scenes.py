"""Scenes: where a video's picture changes, and one caption for each scene.

`scenes(captioner, source)` is the one path from a video to captions: a reader thread samples frames
(sources.py) while the encoder runs on the frames already read, a few at a time; each sample either goes on the
current scene or starts a new one (`SceneConfig`); a scene that ends is captioned once, by
`Captioner.describe` on the features of its representative frame (the sample nearest the scene's mean), and
yielded at once. Memory stays bounded however long a source runs: the read-ahead queue is short, and a scene
keeps its running means and at most 2 x `SceneConfig.keep` candidate frames, evenly spread over it.
"""
from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np
import torch
from PIL import Image

from ..captioning import Caption, Captioner
from .sources import Break, Sample, Source, parse_source, picture, samples

READ_AHEAD = 8  # samples the reader may hold ready beyond the batch being encoded
BATCH = 8  # samples encoded together at most (fewer when fewer are ready: a live source never waits)


@dataclass(frozen=True)
class SceneConfig:
    """When a sample starts a new scene: chosen with the shipped model's encoder (EfficientNet-Lite2) on videos
    made for the purpose, as the most robust setting of a grid (benchmarks/video_scenes.py; BENCHMARKS.md).

    A change between two pictures is the cosine distance of the encoder's pooled vectors plus `colour` times the
    mean absolute difference of their 4 x 4 colour thumbnails (0-1). A sample starts a scene when its change from
    the sample before is over `cut`, or its change from the scene's mean over `drift` (a dissolve: each step
    small, the whole large). A scene that began at a change and changes again after one sample, or before it has
    been seen for `settle` seconds (its samples x the time between them), was the middle of a dissolve, unlike
    both sides: its samples are dropped and the scene begins where it did, without them; so a shot shorter than
    that joins the scene after it."""

    cut: float = 0.4
    drift: float = 0.35
    colour: float = 1.0
    settle: float = 2.0  # seconds
    keep: int = 8  # a scene keeps fewer than 2 x keep candidates for its representative frame, evenly spread


THUMB = 4  # the colour thumbnail is THUMB x THUMB cells of the encoder's input


@dataclass
class Scene:
    """One scene of a source: when, its caption, and the frame it was captioned from."""

    source: str
    number: int  # 1, 2, ... within its source
    start: float  # seconds
    end: float
    caption: Caption
    keytime: float  # the time of the frame captioned
    frame: av.VideoFrame | None = None  # that frame, when asked for (`scenes(..., keyframes=True)`)

    @property
    def said(self) -> str:
        return self.caption.said

    def keyframe(self) -> Image.Image:
        """The frame captioned, at the video's resolution (needs `keyframes=True`)."""
        if self.frame is None:
            raise ValueError("this scene kept no frame: ask scenes() for keyframes")
        return picture(self.frame)

    def jpeg(self) -> bytes:
        """The keyframe as the JPEG file `captioner video --frames` saves (needs `keyframes=True`)."""
        out = io.BytesIO()
        self.keyframe().save(out, "JPEG", quality=90)
        return out.getvalue()

    def to_dict(self) -> dict:
        """Every field but the frame, JSON-ready: a Scene passed between processes (its keyframe goes as `jpeg`)."""
        return {"source": self.source, "number": self.number, "start": self.start, "end": self.end,
                "caption": self.caption.to_dict(), "keytime": self.keytime}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """The Scene `to_dict` gave, with no frame."""
        return cls(**d | {"caption": Caption.from_dict(d["caption"])})

    def to_json(self) -> dict:
        c = self.caption
        return {"source": self.source, "start": round(self.start, 3), "end": round(self.end, 3), "caption": c.text,
                "confidence": None if c.confidence is None else round(c.confidence, 3),
                "tags": [t.to_json() for t in c.tags], "score": round(c.score, 4), "keyframe": round(self.keytime, 3)}


@dataclass
class Look:
    """One sample as the scene finder sees it."""

    time: float
    unit: np.ndarray  # [D] the encoder's pooled vector, unit length
    thumb: np.ndarray  # [THUMB * THUMB * 3] its colour thumbnail (`thumbnail`)
    pooled: torch.Tensor | None = None  # [D] and [N, D]: the features a caption is made from
    grid: torch.Tensor | None = None
    tuned: tuple[torch.Tensor, torch.Tensor] | None = None  # a fine-tuned encoder top's ([D], [N, D]), if any
    frame: av.VideoFrame | None = None


@dataclass
class OpenScene:
    """A scene being gathered: its running means and an evenly spread few of its samples."""

    start: float
    units: np.ndarray  # [D] sum of the samples' unit vectors
    thumbs: np.ndarray  # [THUMB * THUMB * 3] sum of their thumbnails
    after_change: bool = False  # it began where the picture changed (not at the start, nor after a break)
    last: float = 0.0  # its last sample's time
    count: int = 0
    stride: int = 1  # every stride-th sample is a candidate
    candidates: list[Look] = field(default_factory=list)

    def add(self, look: Look, keep: int) -> None:
        if self.count % self.stride == 0:
            self.candidates.append(look)
            if len(self.candidates) == 2 * keep:
                self.candidates, self.stride = self.candidates[::2], 2 * self.stride
        self.units += look.unit
        self.thumbs += look.thumb
        self.count += 1
        self.last = look.time

    def representative(self) -> Look:
        """The candidate nearest the scene's mean: its most typical frame."""
        mean = self.units / self.count
        return max(self.candidates, key=lambda c: float(c.unit @ mean))


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """[THUMB * THUMB * 3] the picture's mean colour in each of THUMB x THUMB cells, 0-1."""
    s = pixels.shape[0] // THUMB * THUMB
    return pixels[:s, :s].reshape(THUMB, s // THUMB, THUMB, s // THUMB, 3).mean((1, 3)).ravel() / 255.0


def change(unit_a: np.ndarray, thumb_a: np.ndarray, unit_b: np.ndarray, thumb_b: np.ndarray,
           config: SceneConfig) -> float:
    """How much picture b differs from a (0: the same); a scene's sums may stand for a."""
    cosine = float(unit_a @ unit_b) / max(float(np.linalg.norm(unit_a) * np.linalg.norm(unit_b)), 1e-12)
    return 1.0 - cosine + config.colour * float(np.abs(thumb_a - thumb_b).mean())


class SceneFinder:
    """Where scenes begin, decided a sample at a time: `scenes` feeds it, benchmarks/video_scenes.py replays it
    on stored samples to choose SceneConfig."""

    def __init__(self, config: SceneConfig, every: float):
        self.config, self.every = config, every
        self.scene: OpenScene | None = None
        self.previous: Look | None = None

    def add(self, look: Look) -> tuple[OpenScene, float] | None:
        """Take the next sample; returns the scene it ends and where (halfway between the two samples), if any."""
        ended, scene = None, self.scene
        if scene is None:
            scene = OpenScene(look.time, np.zeros_like(look.unit), np.zeros_like(look.thumb))
        elif (change(self.previous.unit, self.previous.thumb, look.unit, look.thumb, self.config) > self.config.cut
              or change(scene.units, scene.thumbs / scene.count, look.unit, look.thumb, self.config)
              > self.config.drift):
            start = scene.start
            settling = scene.count == 1 or scene.count * self.every < self.config.settle
            if not (scene.after_change and settling):
                start = (scene.last + look.time) / 2
                ended = scene, start
            scene = OpenScene(start, np.zeros_like(look.unit), np.zeros_like(look.thumb), after_change=True)
        scene.add(look, self.config.keep)
        self.scene, self.previous = scene, look
        return ended

    def close(self, end: float) -> tuple[OpenScene, float] | None:
        """End the scene so far at `end` (the picture stopped there), if there is one."""
        ended = (self.scene, max(end, self.scene.last)) if self.scene else None
        self.scene, self.previous = None, None
        return ended


def _read_ahead(items: Iterator[Sample | Break], stop: threading.Event, halt: threading.Event
                ) -> Iterator[list[Sample | Break]]:
    """`items` read in a thread, READ_AHEAD at most ahead, given in batches of up to BATCH samples: the first
    waited for, the others only if ready (so a live source never waits for a batch to fill); a Break ends a
    batch. The thread's exception is raised here, in its place. Ends early when `stop` is set; sets `halt`
    (which `items` watches) once the consumer is done."""
    ready: queue.Queue = queue.Queue(READ_AHEAD)
    end = object()

    def put(item: object) -> None:
        while not halt.is_set():
            try:
                return ready.put(item, timeout=0.1)
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put(item)
            put(end)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="captioner-video-reader", daemon=True)
    thread.start()
    try:
        batch: list[Sample | Break] = []
        while not stop.is_set():
            try:
                item = ready.get(timeout=0.1) if not batch else ready.get_nowait()
            except queue.Empty:
                if batch:
                    yield batch
                    batch = []
                continue
            if item is end:
                break
            if isinstance(item, BaseException):
                if batch:
                    yield batch
                raise item
            batch.append(item)
            if isinstance(item, Break) or len(batch) == BATCH:
                yield batch
                batch = []
        if batch and not stop.is_set():
            yield batch
    finally:
        halt.set()
        thread.join(timeout=1.0)  # a reader blocked on a stalled stream gives up at its read timeout; it is a daemon


def scenes(captioner: Captioner, source: str | os.PathLike[str] | Source, every: float = 1.0, live: bool | None = None,
           beam: int | None = None, keyframes: bool = False, config: SceneConfig = SceneConfig(),
           stop: threading.Event | None = None) -> Iterator[Scene]:
    """The scenes of `source` (a file, stream URL or camera: see sources.parse_source), in order, each yielded as
    soon as it ends, captioned with the model's decoding settings (`beam` in place of its width).

    `every`: seconds between samples; `live`: see sources.samples (default: cameras and streams with no end);
    `keyframes`: keep each scene's captioned frame (Scene.keyframe); `stop`: when set, the scene so far is
    captioned and yielded, and the iteration ends. Raises VideoError (one sentence) when the source cannot be
    read, after the scenes before the place it broke.

    The encoder shares the CPU with FFmpeg's decoder: `captioner video` gives torch one thread
    (`torch.set_num_threads(1)`), since its default, a thread per core whose idle threads spin, slows both
    several times over.
    """
    source = source if isinstance(source, Source) else parse_source(source)
    stop = stop or threading.Event()
    halt = threading.Event()
    size = captioner.encoder.spec.input_size
    finder = SceneFinder(config, every)
    number = 0

    def caption(ended: tuple[OpenScene, float]) -> Scene:
        nonlocal number
        number += 1
        scene, end = ended
        best = scene.representative()
        tuned = None if best.tuned is None else tuple(t[None] for t in best.tuned)
        made = captioner.describe(best.pooled[None], best.grid[None], tuned, beam=beam)[0]
        return Scene(source.name, number, scene.start, end, made, best.time, best.frame)

    try:
        for batch in _read_ahead(samples(source, every, size, live, keyframes, halt), stop, halt):
            taken = [s for s in batch if isinstance(s, Sample)]
            if taken:
                pooled, grid, tuned = captioner.encoder(np.stack([s.pixels for s in taken]))  # [B, D], [B, N, D]
                units = torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()
            k = 0
            for item in batch:
                if isinstance(item, Break):
                    ended = finder.close(item.time)
                else:
                    # copies, so that a kept candidate does not keep its whole batch
                    ended = finder.add(Look(item.time, units[k], thumbnail(item.pixels), pooled[k].clone(),
                                            grid[k].clone(),
                                            None if tuned is None else (tuned[0][k].clone(), tuned[1][k].clone()),
                                            item.frame))
                    k += 1
                if ended:
                    yield caption(ended)
        if finder.scene is not None:  # stopped: the scene so far
            yield caption(finder.close(finder.scene.last + every))
    finally:
        halt.set()
