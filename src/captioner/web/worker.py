"""One thread owns the captioner: requests queue photos, the thread captions them together in batches.

A single worker is faster under load than one model per request: photos that
arrive while a batch runs are captioned together in the next one
(micro-batching). The queue is bounded, so a flood of requests is refused
(`QueueFull`, which the app answers with 503) instead of piling up; whatever
goes wrong while a batch is captioned fails that batch's requests, never the
thread, so the next batch is served.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from pathlib import Path

from ..captioning import Caption, Captioner

_STOP = None
DEFAULT_MAX_QUEUE = 64
CLOSE_SECONDS = 60.0
"""How long closing waits for the photos already queued (64 at the default half a second each, and some)."""


class QueueFull(Exception):
    """The worker has `max_queue` photos waiting: come back in `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the captioning queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class CaptionWorker:
    """Caption photo files on one background thread, up to `max_batch` of them at a time."""

    def __init__(self, captioner: Captioner, max_batch: int = 8, max_queue: int = DEFAULT_MAX_QUEUE):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        self.captioner = captioner
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.captioned = 0  # photos answered with a caption (or the photo's own error)
        self.failed = 0  # photos whose batch failed: their requests got the failure
        self.seconds_per_photo = 0.5  # a running estimate, for Retry-After
        self._jobs: queue.Queue[tuple[Path, Future[Caption]] | None] = queue.Queue(max_queue)
        self._busy_since: float | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="captioner-worker", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> Future[Caption]:
        """A future for the photo's Caption (its `error` says why when the photo cannot be read).

        Raises QueueFull when `max_queue` photos are already waiting.
        """
        if self._closing or not self._thread.is_alive():
            raise RuntimeError("the captioning worker has stopped")
        future: Future[Caption] = Future()
        try:
            self._jobs.put_nowait((path, future))
        except queue.Full:
            raise QueueFull(self.retry_after()) from None
        return future

    def retry_after(self) -> int:
        """Whole seconds until the photos waiting now are likely done (at least 1)."""
        return max(1, math.ceil((self._jobs.qsize() + self.max_batch) * self.seconds_per_photo))

    def has_room(self) -> bool:
        return not self._jobs.full()

    def health(self) -> dict:
        """Whether the thread runs, how many photos wait, and what it has done."""
        busy = self._busy_since
        return {"alive": self._thread.is_alive(), "queued": self._jobs.qsize(), "max_queue": self.max_queue,
                "busy_seconds": round(time.monotonic() - busy, 1) if busy is not None else 0.0,
                "captioned": self.captioned, "failed": self.failed}

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Finish the photos already queued, then stop the thread; wait `timeout` seconds at most.

        Photos still waiting then (the thread died, or a batch hangs) fail with
        RuntimeError, so no request waits for them forever.
        """
        self._closing = True
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            try:
                self._jobs.put(_STOP, timeout=timeout)  # a full queue with a dead thread never drains
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        stopped = RuntimeError("the captioning worker has stopped")
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._fail([job], stopped)

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._busy_since = time.monotonic()
                try:
                    self._caption(batch)
                except BaseException as exc:  # noqa: BLE001 - whatever it is, answer these and serve the next
                    self._fail(batch, exc)
                finally:
                    self._busy_since = None
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
        start = time.monotonic()
        captions = {c.path: c for c in self.captioner.caption(paths, batch_size=len(paths))}
        missing = [p for p in paths if p not in captions]
        if missing:
            raise RuntimeError(f"the captioner returned no caption for {len(missing)} of {len(paths)} photos")
        seconds = (time.monotonic() - start) / len(paths)
        self.seconds_per_photo = 0.8 * self.seconds_per_photo + 0.2 * seconds
        for path, future in batch:
            future.set_result(captions[path])
            self.captioned += 1

    def _fail(self, batch: list[tuple[Path, Future[Caption]]], exc: BaseException) -> None:
        for _, future in batch:
            try:
                future.set_exception(exc)
                self.failed += 1
            except InvalidStateError:  # answered before the failure, or cancelled by its client
                pass
