"""Helpers for the web app's tests: the tiny model as a Captioner, and the app served for real on 127.0.0.1.

    from webapp import local_client, tiny_captioner, LiveServer
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient

from captioner.captioning import Captioner
from captioner.models.folder import load_model
from conftest import TINY_ENCODER, cached_encoder

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def local_client(app) -> TestClient:
    """FastAPI's TestClient, naming the server localhost (the app answers loopback host names only)."""
    return TestClient(app, base_url="http://localhost")


def tiny_captioner(model_dir: Path) -> Captioner:
    """The tiny random model with the session's lite0 encoder (loaded once)."""
    return Captioner(load_model(model_dir, fast=True), cached_encoder(TINY_ENCODER))


class LiveServer:
    """An app served by uvicorn in a thread on a free port of 127.0.0.1: `with LiveServer(app) as url: ...`."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def examples_gallery(folder: Path, captioner: Captioner):
    """A gallery of copies of the six example photos in `folder`, indexed with `captioner`, opened for reading."""
    from captioner.gallery import Gallery

    photos = folder / "photos"
    photos.mkdir(parents=True)
    for photo in EXAMPLES.glob("*.jpg"):
        (photos / photo.name).write_bytes(photo.read_bytes())
    db = folder / "gallery.db"
    writer = Gallery.create(db, captioner=captioner)
    writer.index([photos], progress=False)
    writer.close()
    return Gallery.open(db, captioner=captioner)
