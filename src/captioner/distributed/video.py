"""Video files on Ray: a file per task, on an actor pool that loads the model once per actor.

The files become a Ray Dataset of one row each (batch.run_ordered, batches of one); an actor runs
`video.scenes.scenes` on its file exactly as `captioner video` does here, and yields a row per scene as it ends
(the scene as JSON, its keyframe as JPEG bytes), then one last row with the file's error sentence, if any, and
the warnings said while reading it. Ray Data gathers a file's rows into its output blocks (of up to its target
block size), so the driver gets a file's scenes, in order, once the file is done and the files before it are:
files come back in the order given.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from ..captioning import Captioner
from ..video.scenes import Scene, scenes
from ..video.sources import VideoError
from .batch import run_ordered
from .cluster import DEVICE, connect, pin_threads

Found = tuple[int, Scene | VideoError, bytes | None]
"""What a source gave: its index among the sources, a scene (and its keyframe as JPEG) or the error it ended in."""


class _Said(logging.Handler):
    """The warnings captioner says while an actor reads a file: they go back to the driver, which says them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[list] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append([record.name, record.levelno, record.getMessage()])


def _row(scene: str = "", jpeg: bytes = b"", error: str = "", said: str = "") -> dict[str, np.ndarray]:
    return {"scene": np.array([scene]), "jpeg": np.array([jpeg], dtype=object), "error": np.array([error]),
            "said": np.array([said])}


class ScenesActor:
    """Holds one loaded captioner; finds and captions the scenes of one video file per call."""

    def __init__(self, model: str | None, every: float, beam: int | None, keyframes: bool, cpus: float):
        pin_threads(cpus)
        self.captioner = Captioner.load(model, device=DEVICE)
        self.every, self.beam, self.keyframes = every, beam, keyframes

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        (name,) = batch["paths"][0]
        said, error = _Said(), ""
        logger = logging.getLogger("captioner")
        if not logger.isEnabledFor(logging.WARNING):  # a worker whose logging Ray set quieter
            logger.setLevel(logging.WARNING)
        logger.addHandler(said)
        try:
            for scene in scenes(self.captioner, str(name), self.every, False, self.beam, self.keyframes):
                yield _row(json.dumps(scene.to_dict()), scene.jpeg() if self.keyframes else b"")
        except VideoError as e:
            error = str(e)
        finally:
            logger.removeHandler(said)
        yield _row(error=error, said=json.dumps(said.records))


def scenes_on_ray(names: Sequence[str], model: str | None = None, every: float = 1.0, beam: int | None = None,
                  keyframes: bool = False, actors: int | None = None, address: str | None = None,
                  actor: type = ScenesActor) -> Iterator[Found]:
    """The scenes of the video files `names` found on Ray actors (`actors` of 1 CPU each, default one per CPU of
    the cluster), as `captioner video` finds them here: file by file in the order given, each file's scenes in
    order, then its error, if any. The warnings an actor said while reading a file are said here, after its
    scenes."""
    connect(address)  # now: a cluster that does not answer is said before anything is written
    kwargs = {"model": model, "every": every, "beam": beam, "keyframes": keyframes}

    def found() -> Iterator[Found]:
        index = 0
        for row in run_ordered(actor, kwargs, list(names), 1, actors, address):
            (scene,), (jpeg,), (error,), (said,) = row["scene"], row["jpeg"], row["error"], row["said"]
            if scene:
                yield index, Scene.from_dict(json.loads(scene)), bytes(jpeg) if keyframes else None
                continue
            for logger, level, message in json.loads(said):
                logging.getLogger(logger).log(level, message)
            if error:
                yield index, VideoError(str(error)), None
            index += 1
    return found()
