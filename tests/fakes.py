"""A stand-in captioner for indexing many files fast (seeded small vectors, a caption naming the file), and
`python tests/fakes.py index DB FOLDER MODEL_DIR`: an indexing run with it, for the kill tests."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from captioner.captioning import Caption
from captioner.models.tags import Tag

FAKE_DIM = 8


def fake_vector(text: str, dim: int) -> np.ndarray:
    """A unit vector seeded by `text`: the same text, the same vector, in any process."""
    v = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


class FakeCaptioner:
    """Captions files named N.jpg "photo N" with seeded vectors; every third is tagged a cat."""

    def __init__(self, model_folder: Path, seconds_per_photo: float = 0.0):
        self.model = SimpleNamespace(folder=Path(model_folder))
        self.encoder = SimpleNamespace(spec=SimpleNamespace(dim=FAKE_DIM))
        self.embedding = None
        self.device = torch.device("cpu")
        self.seconds_per_photo = seconds_per_photo

    def stream(self, paths, batch_size=16):
        for p in paths:
            time.sleep(self.seconds_per_photo)
            stem = Path(p).stem
            yield Caption(Path(p), text=f"photo {stem}", score=-1.0, vector=fake_vector(stem, FAKE_DIM),
                          tags=[Tag("tabby", 0.5, "cat")] if int(stem) % 3 == 0 else [])


def fake_text_vectors(embedding, images, captions, device=None) -> np.ndarray:
    """`embedding.photo_vectors` without the sentence encoder: a seeded vector per caption."""
    return np.stack([fake_vector(c[0], 384) for c in captions])


def fake_query_vectors(embedding, texts, device=None) -> np.ndarray:
    """`embedding.query_vectors` without the sentence encoder: the same seeded vector per text."""
    return np.stack([fake_vector(t, 384) for t in texts])


def index_main(db: str, folder: str, model_dir: str) -> None:
    """Index `folder` into `db` with the fake captioner, committing and saving often (a kill lands anywhere)."""
    from captioner.gallery import Gallery, indexer

    indexer.photo_vectors = fake_text_vectors
    indexer.COMMIT_EVERY = 5
    indexer.SAVE_EVERY = 0.05
    with Gallery.create(db, captioner=FakeCaptioner(Path(model_dir), 0.002)) as g:
        print("ready", flush=True)
        g.index([folder], progress=False)
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "index":
        index_main(*sys.argv[2:5])
