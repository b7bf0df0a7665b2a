"""SIGKILL at seeded moments: `index` (with a fast stand-in captioner) and `train` (on ~50 Flickr8k photos)
leave what they had committed, and a rerun or --resume ends where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors import safe_open

from captioner.gallery import Gallery
from captioner.training.config import config_from_dict
from conftest import TEST_THREADS
from fakes import FakeCaptioner
from test_train import assert_same_checkpoints, mini_corpus, tiny_config  # noqa: F401  (a fixture)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
ENV = os.environ | {"PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": str(TEST_THREADS)}
KILLS = 20
PHOTOS = 300


def run_index(db: Path, folder: Path, model_dir: Path, kill_after: float | None) -> float:
    """One `index` run of the fake captioner, SIGKILLed `kill_after` seconds after it starts indexing unless it
    has ended by then (None: never); the seconds it indexed."""
    child = subprocess.Popen([sys.executable, str(TESTS / "fakes.py"), "index", str(db), str(folder),
                              str(model_dir)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n", child.stderr.read()
    started = time.monotonic()
    try:
        assert child.wait(timeout=300 if kill_after is None else kill_after) == 0, child.stderr.read()
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        child.send_signal(signal.SIGKILL)
        child.wait()
    child.stdout.close()
    child.stderr.close()
    return time.monotonic() - started


def catalogue(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT path, sha256, caption, tags, error, visual, text FROM photos")
        return {r[0]: r[1:] for r in rows}


def assert_consistent(db: Path, model_dir: Path) -> None:
    """The database is sound, the saved vectors are whole (or absent), and the vectors agree with the catalogue."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        generation = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        rows = conn.execute("SELECT id, visual, text FROM photos WHERE visual IS NOT NULL").fetchall()
    vectors = Path(f"{db}.vectors")
    if vectors.exists():
        with safe_open(str(vectors), "np") as f:  # written atomically: never a partial file
            assert int(f.metadata()["generation"]) <= generation
    with Gallery.open(db, captioner=FakeCaptioner(model_dir)) as g:
        assert len(g) == len(rows)
        if rows:
            ids = [r[0] for r in rows]
            stored = np.stack([np.frombuffer(r[1], np.float16) for r in rows]).astype(np.float32)
            np.testing.assert_allclose(g.vectors.visual.vectors(ids), stored, atol=1e-3)


def test_index_killed_at_twenty_seeded_moments_ends_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(PHOTOS):
        (folder / f"{i:03d}.jpg").write_bytes(f"photo {i}".encode())
    full = run_index(tmp_path / "straight.db", folder, tiny_model_dir, None)
    db = tmp_path / "killed.db"
    schedule = random.Random(13)  # each run goes on from the last: kills spread over the whole indexing
    counts = []
    for _ in range(KILLS):
        run_index(db, folder, tiny_model_dir, schedule.uniform(0, full / 12))
        assert_consistent(db, tiny_model_dir)
        counts.append(len(catalogue(db)))
    assert counts == sorted(counts)  # nothing committed is ever lost
    assert sum(0 < n < PHOTOS for n in counts) >= KILLS // 2, f"the kills should land mid-run: {counts}"
    run_index(db, folder, tiny_model_dir, None)
    assert_consistent(db, tiny_model_dir)
    straight, killed = catalogue(tmp_path / "straight.db"), catalogue(db)
    assert len(straight) == PHOTOS and straight.keys() == killed.keys()
    for path in straight:
        assert straight[path] == killed[path], path


def test_train_killed_mid_epoch_resumes_to_the_same_weights(mini_corpus, tmp_path):  # noqa: F811
    from captioner.training.train import train

    values = tiny_config(mini_corpus, tmp_path / "straight", "attention", epochs=4)
    train(config_from_dict(values), progress=False)
    values["train"]["out"] = str(tmp_path / "killed")
    config = tmp_path / "killed.toml"
    config.write_text(toml(values))
    command = [sys.executable, "-m", "captioner.cli", "train", str(config)]
    child = subprocess.Popen(command, env=ENV | {"PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    seen = []  # read as it comes (progress bars included), so the pipe never fills
    said = next((line for line in child.stderr if seen.append(line) or "epoch 1:" in line), "")  # after its checkpoint
    child.send_signal(signal.SIGKILL)  # epoch 1 is checkpointed: epoch 2 is under way
    child.wait()
    child.stderr.close()
    assert said, "".join(seen)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs and epochs[-1] < 4, "the kill should land before the last epoch"
    resumed = subprocess.run(command + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "killed")


def toml(values: dict) -> str:
    """A config dict as TOML (tables of strings, numbers and booleans)."""
    def value(v) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    return "".join(f"[{table}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in entries.items()) + "\n"
                   for table, entries in values.items())
