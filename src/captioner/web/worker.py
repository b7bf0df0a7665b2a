"""One thread owns the captioner: requests queue photos, the thread captions them together in batches.

`Captioner.stream` records warnings process-wide, so two captioning calls must
never overlap; a single worker is also faster under load, since photos that
arrive while a batch runs are captioned together in the next one
(micro-batching) instead of each waiting for a model of its own.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from pathlib import Path

from captioner.api import Caption, Captioner

_STOP = None


class CaptionWorker:
    """Caption photo files on one background thread, up to `max_batch` of them at a time."""

    def __init__(self, captioner: Captioner, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.captioner = captioner
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[tuple[Path, Future[Caption]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="captioner-worker", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> Future[Caption]:
        """A future for the photo's Caption (its `error` says why when the photo cannot be read)."""
        if not self._thread.is_alive():
            raise RuntimeError("the captioning worker has stopped")
        future: Future[Caption] = Future()
        self._jobs.put((path, future))
        return future

    def close(self) -> None:
        """Finish the photos already queued, then stop the thread."""
        self._jobs.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._caption(batch)
            if stop:
                return

    def _next_batch(self) -> tuple[list[tuple[Path, Future[Caption]]], bool]:
        """The jobs waiting now (blocking for the first), and whether the stop signal came."""
        batch = []
        job = self._jobs.get()
        while job is not _STOP:
            batch.append(job)
            if len(batch) == self.max_batch:
                return batch, False
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _caption(self, batch: list[tuple[Path, Future[Caption]]]) -> None:
        batch = [(path, future) for path, future in batch if future.set_running_or_notify_cancel()]
        if not batch:  # every request in it was cancelled (its client went away)
            return
        paths = list(dict.fromkeys(path for path, _ in batch))  # the same gallery photo may be asked twice
        try:
            captions = {c.path: c for c in self.captioner.caption(paths, batch_size=len(paths))}
        except Exception as exc:  # a bug or an exhausted machine: fail these requests, keep serving
            for _, future in batch:
                future.set_exception(exc)
            return
        for path, future in batch:
            future.set_result(captions[path])
