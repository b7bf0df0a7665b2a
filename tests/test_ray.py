"""The Ray paths on a local Ray instance of 2 CPUs: the same captions, features, gallery rows and training updates
as the local paths; a killed actor costs a retried batch; without Ray, --ray says what to install."""
from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from captioner.captioning import Captioner
from captioner.cli import main
from captioner.distributed.batch import CaptionActor, caption_stream, encode_stream
from captioner.features.cache import FeatureCache, build_cache
from captioner.gallery import Gallery
from captioner.models.embedding import Embedding, RetrievalConfig, save
from captioner.models.folder import load_model
from captioner.training.config import config_from_dict
from captioner.training.train import CHECKPOINT, train
from conftest import TEST_THREADS, TINY_ENCODER
from photos import gradient, make_broken_photos
from test_train import mini_corpus, tiny_config  # noqa: F401  (a fixture, and the configs it trains with)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for this module's tests (captioner connects to it), stopped at the end.

    Its agents get fixed ports: beside a busy process (a training run) they can take over a minute to
    start, longer than the raylet waits for them to report ports it did not fix.
    """
    ray = pytest.importorskip("ray")
    from ray._private import parameter

    assert TEST_THREADS == 1, "the Ray actors run torch with 1 thread: compare with a 1-thread local run"
    ports = dict(zip(("metrics_agent_port", "dashboard_agent_listen_port", "runtime_env_agent_port",
                      "metrics_export_port"), free_ports(4)))
    plain = parameter.RayParams.__init__

    def with_ports(self, *args, **kwargs):
        plain(self, *args, **kwargs | {k: v for k, v in ports.items() if kwargs.get(k) is None})

    patch = pytest.MonkeyPatch()
    patch.setattr(parameter.RayParams, "__init__", with_ports)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        yield ray
    finally:
        ray.shutdown()
        patch.undo()


@pytest.fixture
def photos(tmp_path) -> Path:
    """The six example photos, two drawn ones, and broken files of every kind among them."""
    folder = tmp_path / "photos"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    Image.fromarray(gradient(96, 64)).save(folder / "gradient.png")
    broken = make_broken_photos(folder / "broken")
    broken["missing"].unlink(missing_ok=True)
    return folder


def test_caption_json_lines_are_the_local_ones(local_ray, photos, tiny_model_dir, reuse_encoders, capsys):
    args = ["caption", str(photos), "--model", str(tiny_model_dir), "--json", "--tags", "--batch-size", "3"]
    assert main(args) == 1  # broken photos fail
    local = capsys.readouterr()
    assert main(args + ["--ray", "--ray-actors", "2"]) == 1
    remote = capsys.readouterr()
    lines = local.out.splitlines()
    assert remote.out.splitlines() == lines
    assert len(lines) == 12 and sum("error" in json.loads(line) for line in lines) == 4
    assert [json.loads(line)["path"] for line in lines] == sorted(json.loads(line)["path"] for line in lines)
    warned = [line for line in local.err.splitlines() if line.startswith("captioner: warning")]
    assert len(warned) == 1 and warned == [line for line in remote.err.splitlines()
                                           if line.startswith("captioner: warning")]  # the truncated JPEG


def test_features_are_the_local_ones(local_ray, photos, lite0, tmp_path):
    paths = sorted(p for p in photos.rglob("*") if p.is_file())
    here, hashes, failed = build_cache(lite0, paths, tmp_path / "here", batch_size=4, progress=False)
    there, hashes_there, failed_there = build_cache(lite0, paths, tmp_path / "there", batch_size=4, progress=False,
                                                    encode=encode_stream(TINY_ENCODER, 224, actors=2))
    assert hashes_there == hashes and failed_there == failed and len(failed) == 4
    done = [h for h in hashes if h in here]
    assert len(done) == 8 and set(done) == set(there.rows)
    for a, b in zip(here.load(done), FeatureCache.open(tmp_path / "there", lite0.spec.key).load(done)):
        assert torch.equal(a, b)


def gallery_rows(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT path, sha256, caption, alternatives, score, error, visual, text FROM photos")}


def test_index_commits_the_local_rows_and_a_killed_actor_loses_nothing(local_ray, photos, tiny_model_dir, tmp_path,
                                                                        lite0):
    model = tmp_path / "model"  # with a photo-text embedding: the image vectors come back from the actors too
    shutil.copytree(tiny_model_dir, model)
    torch.manual_seed(0)
    save(model, Embedding(RetrievalConfig(width=32, heads=2), 1280, 49))
    tiny = Captioner(load_model(model, fast=True), lite0)
    local = Gallery.create(tmp_path / "local.db", captioner=tiny)
    local_report = local.index([photos], progress=False, batch_size=2)
    local.close()

    marker = tmp_path / "killed-once"

    class DiesOnce(CaptionActor):
        """Kills its own process on its first batch: Ray restarts the actor and runs that batch again."""

        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    remote = Gallery.create(tmp_path / "ray.db", captioner=tiny)
    report = remote.index([photos], progress=False, batch_size=2,
                          stream=caption_stream(str(model), actors=2, search=True, actor=DiesOnce))
    remote.close()
    assert marker.exists()  # an actor was killed
    assert report.encoded == local_report.encoded == 8 and report.failed == local_report.failed
    ours, theirs = gallery_rows(tmp_path / "local.db"), gallery_rows(tmp_path / "ray.db")
    assert ours.keys() == theirs.keys() and len(ours) == 12
    for path, row in ours.items():
        assert theirs[path][:5] == row[:5], path  # hash, caption, alternatives, score, error
        for a, b in zip(row[5:], theirs[path][5:]):  # the float16 vectors
            assert (a is None) == (b is None) and (a is None or len(a) in (2 * 1280, 2 * 768))
            if a is not None:
                np.testing.assert_allclose(np.frombuffer(a, np.float16), np.frombuffer(b, np.float16), atol=1e-3)


def test_ray_training_makes_the_one_worker_update_then_learns_and_resumes(local_ray, mini_corpus, tmp_path):
    from captioner.distributed.train import train_on_ray

    def config(out: Path):
        values = tiny_config(mini_corpus, out, "attention", epochs=3, batch_captions=200, bf16=False, scst_epochs=1,
                             scst_samples=2)  # 40 photos of 5 captions: one batch an epoch, one update
        values["model"]["dropout"] = 0.0
        return config_from_dict(values)

    train(config(tmp_path / "local"), stop_after=1, progress=False)
    train_on_ray(config(tmp_path / "ray"), 2, stop_after=1, progress=False)
    one, two = load_file(str(tmp_path / "local" / CHECKPOINT)), load_file(str(tmp_path / "ray" / CHECKPOINT))
    assert one.keys() == two.keys()
    for key in (k for k in one if k.startswith("model.")):
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
    model_dir = train_on_ray(config(tmp_path / "ray"), 2, resume=True, progress=False)
    log = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["xe", "xe", "xe", "scst"]
    assert log[2]["train_loss"] < log[0]["train_loss"] - 0.1, log
    caption = Captioner.load(model_dir).caption([EXAMPLES / "tabby_cat.jpg"])[0]
    assert not caption.error and caption.words


def test_without_ray_the_flag_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    assert main(["caption", str(EXAMPLES / "tabby_cat.jpg"), "--ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'captioner[ray]'" in err
    assert main(["video", str(EXAMPLES / "tabby_cat.jpg"), "--ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'captioner[ray]'" in err
    (tmp_path / "c.toml").write_text("")
    assert main(["train", str(tmp_path / "c.toml"), "--ray-workers", "2"]) == 1
    assert "pip install 'captioner[ray]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two small H.264 videos of three example photos each (a cut and a dissolve), and broken copies of one."""
    from test_video import EXAMPLES as PHOTOS
    from test_video import FPS, SIZE, make_video, shots_of

    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, photos in (("one", PHOTOS[:3]), ("two", PHOTOS[3:6])):
        shots, changes = shots_of([p.stem for p in photos], [3.2, 3.0, 3.4], ["cut", "dissolve"])
        made[name] = folder / f"{name}.mkv"
        make_video([Image.open(p) for p in photos], made[name], shots, changes, SIZE, FPS, gop=FPS)
    whole = made["one"].read_bytes()
    made["truncated"] = folder / "truncated.mkv"
    made["truncated"].write_bytes(whole[:int(0.6 * len(whole))])
    damaged = bytearray(whole)  # 8% of its bytes, from 30% on, overwritten by noise: decoded around, with a warning
    start, length = int(0.3 * len(whole)), int(0.08 * len(whole))
    damaged[start:start + length] = np.random.default_rng(5).integers(0, 256, length, dtype=np.uint8).tobytes()
    made["damaged"] = folder / "damaged.mkv"
    made["damaged"].write_bytes(bytes(damaged))
    made["not a video"] = folder / "notes.mp4"
    made["not a video"].write_text("this is not a video\n")
    return made


def video_run(capsys, *args) -> tuple[int, list[str], list[str]]:
    """`captioner video ARGS...` in-process: exit status, stdout lines, and captioner's lines on stderr (its errors,
    and warnings naming a source by its path; not Ray's own)."""
    code = main(["video", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines() if line.startswith(("captioner", "/"))]


def test_video_files_on_ray_give_the_local_scenes_captions_and_frames(local_ray, clips, tmp_path, capsys):
    runs = {}
    for where, extra in (("here", []), ("ray", ["--ray", "--ray-actors", "2"])):
        frames = tmp_path / where
        code, lines, err = video_run(capsys, clips["one"], clips["two"], "--json", "--frames", frames, *extra)
        assert code == 0 and not err, err
        records = [json.loads(line) for line in lines]
        for r in records:
            r["frame"] = Path(r["frame"]).relative_to(frames).as_posix()
        runs[where] = records, {p.name: p.read_bytes() for p in frames.iterdir()}
    (records, frames), (ray_records, ray_frames) = runs["here"], runs["ray"]
    assert ray_records == records and ray_frames == frames  # scenes, times, captions, tags; the JPEGs byte for byte
    assert [r["source"] for r in records] == [str(clips["one"])] * 3 + [str(clips["two"])] * 3
    assert [r["frame"] for r in records] == [f"{n}.scene-000{i}.jpg" for n in ("one", "two") for i in (1, 2, 3)]


def test_broken_files_on_ray_say_their_local_sentences_and_the_others_keep_their_scenes(local_ray, clips, capsys):
    sources = [clips["one"], clips["truncated"], clips["damaged"], clips["not a video"], clips["two"]]
    here = video_run(capsys, *sources, "--tags")
    there = video_run(capsys, *sources, "--tags", "--ray")
    assert there == here
    code, lines, err = here
    assert code == 1 and len(err) == 3, err
    assert "ends early" in err[0] and f"{clips['damaged']}: the video is damaged at" in err[1] and \
        "is not a video" in err[2], err
    scenes = {clip: sum(line.startswith(f"{clip}: ") for line in lines) for clip in sources}
    assert scenes[clips["one"]] == scenes[clips["two"]] == 3 and scenes[clips["truncated"]] >= 1, lines
    assert scenes[clips["damaged"]] >= 2 and scenes[clips["not a video"]] == 0, lines
    assert sum(line.startswith("  tags: ") for line in lines) == sum(scenes.values())  # each scene's line, its tags


def test_an_actor_killed_partway_through_a_file_costs_the_file_again_and_nothing_twice(local_ray, clips, tmp_path):
    from captioner.distributed.video import ScenesActor, scenes_on_ray

    marker = tmp_path / "killed-once"

    class DiesOnce(ScenesActor):
        """Kills its own process after its first scene, once: Ray restarts the actor and runs that file again."""

        def __call__(self, batch):
            for n, row in enumerate(super().__call__(batch)):
                if n == 1 and not marker.exists():
                    marker.touch()
                    os._exit(1)
                yield row

    names = [str(clips["one"]), str(clips["two"])]
    found = [(i, s.to_json()) for i, s, _ in scenes_on_ray(names, actors=1)]
    again = [(i, s.to_json()) for i, s, _ in scenes_on_ray(names, actors=1, actor=DiesOnce)]
    assert marker.exists() and again == found and [i for i, _ in found] == [0, 0, 0, 1, 1, 1]


def test_subtitles_on_ray_are_the_local_ones(local_ray, clips, tmp_path, capsys):
    for where, extra in (("here", []), ("ray", ["--ray"])):
        code, _, err = video_run(capsys, clips["two"], "--vtt", tmp_path / f"{where}.vtt", "--srt",
                                 tmp_path / f"{where}.srt", *extra)
        assert code == 0 and not err, err
    for kind in ("vtt", "srt"):
        here, there = (tmp_path / f"here.{kind}").read_text(), (tmp_path / f"ray.{kind}").read_text()
        assert there == here and here.count(" --> ") == 3


@pytest.mark.parametrize("other, extra, expected", [
    ("two", ["--live"], "--ray captions video files, a file per task, and --live is for streams"),
    ("http://127.0.0.1:9/live.ts", [], "http://127.0.0.1:9/live.ts is a stream, which runs until stopped"),
    ("/dev/video98", [], "/dev/video98 is a camera, which runs until stopped"),
])
def test_streams_and_cameras_are_not_for_ray(clips, capsys, other, extra, expected):
    """Refused in one sentence before anything runs: no Ray is started (this test has none), nothing printed."""
    code, lines, err = video_run(capsys, clips["one"], clips.get(other, other), "--ray", *extra)
    assert code == 1 and not lines and len(err) == 1 and expected in err[0], err
