"""Videos in the gallery: a small real H.264 video made here with PyAV, indexed beside photos, its scenes items that
search and similar return with their start and end; unchanged, changed, broken and skipped videos; an older
gallery upgraded; the command line's lines for scenes."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from PIL import Image

import captioner.captioning
import captioner.gallery.indexer as indexer
import captioner.video.scenes as scene_module
from captioner.cli import main
from captioner.gallery import Gallery
from conftest import cached_encoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_videos import Change, Shot, make_video  # noqa: E402

FILM = ("tabby_cat", "rocket_on_launch_pad_at_dusk", "rocky_cliff_by_a_lake")


def film(path: Path, names: tuple[str, ...] = FILM) -> Path:
    """A video of example photos, 3 s each, joined by hard cuts (a slow zoom or pan inside each shot)."""
    pictures = [Image.open(ROOT / "examples" / f"{name}.jpg") for name in names]
    shots = [Shot(name, 3.0 * i, 3.0 * (i + 1), ["zoom in", "pan left", "zoom out"][i % 3])
             for i, name in enumerate(names)]
    changes = [Change(3.0 * (i + 1), "cut", 0.0) for i in range(len(names) - 1)]
    make_video(pictures, path, shots, changes, (160, 96), 10, gop=10)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return captioner.captioning.Captioner(captioner.captioning.load_model(tiny_model_dir, fast=True),
                                          cached_encoder("efficientnet-lite0"))


@pytest.fixture
def media(tmp_path) -> Path:
    """Three example photos and a 9 s video of three others."""
    folder = tmp_path / "media"
    folder.mkdir()
    for name in ("astronaut_in_orange_spacesuit", "cup_of_coffee", "man_with_camera_on_tripod"):
        shutil.copy(ROOT / "examples" / f"{name}.jpg", folder)
    film(folder / "clip.mp4")
    return folder


def scene_rows(db: Path) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT id, scene, scene_start, scene_end, caption, keyframe, error FROM photos "
                            "WHERE scene > 0 ORDER BY scene").fetchall()


def test_a_video_beside_photos_becomes_scenes_that_search_and_similar_return(tiny, media, tmp_path):
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        report = g.index([media], progress=False)
        assert (report.added, report.videos, report.failed) == (4, 1, {})
        scenes = scene_rows(g.db)
        assert report.scenes == len(scenes) >= 2 and len(g) == 3 + len(scenes)
        assert [s[1] for s in scenes] == list(range(1, len(scenes) + 1))
        assert scenes[0][2] == 0.0 and scenes[-1][3] >= 8.5  # from the start to the end of the 9 s video
        assert all(a[3] == b[2] and a[2] < a[3] for a, b in zip(scenes, scenes[1:]))  # in order, end to end
        assert all(Image.open(io.BytesIO(s[5])).format == "WEBP" and max(Image.open(io.BytesIO(s[5])).size) <= 320
                   for s in scenes)
        for scene_id, number, start, end, caption, _, _ in scenes:
            found = g.search(caption, k=len(g))
            best = next(m for m in found if m.caption == caption)  # the tiny model may write a caption twice
            assert (best.path.name, best.scene, best.start, best.end) == ("clip.mp4", number, start, end)
            out = best.to_json()
            assert (out["video"], out["start"], out["end"]) == (str(media / "clip.mp4"), round(start, 3),
                                                                round(end, 3))
        first = scenes[0][0]
        like = g.similar(first, k=len(g))
        assert first not in {m.id for m in like} and len(like) == len(g) - 1
        assert {m.path.name for m in like} >= {"cup_of_coffee.jpg", "clip.mp4"}  # photos and the other scenes
        assert g.scene(media / "clip.mp4", scenes[1][2] + 0.1).id == scenes[1][0]
        assert g.scene(media / "clip.mp4", 1e6).id == scenes[-1][0] and g.scene(media / "nothing.mp4") is None
        reranked = g.search(scenes[0][4], k=len(g), rerank=True)  # scenes re-scored from their keyframes
        assert {m.id for m in reranked} == {m.id for m in g.search(scenes[0][4], k=len(g))}
        assert all("likelihood" in m.why for m in reranked)
        assert g.photo(first).indexed.size == (media / "clip.mp4").stat().st_size


def test_an_unchanged_video_is_not_decoded_again_and_a_changed_one_replaces_its_scenes(tiny, media, tmp_path,
                                                                                     monkeypatch):
    video = media / "clip.mp4"
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        g.index([media], progress=False)
        before = scene_rows(g.db)
        decoded = []
        real = scene_module.scenes
        monkeypatch.setattr(scene_module, "scenes", lambda *a, **k: decoded.append(a[1]) or real(*a, **k))
        report = g.index([media], progress=False)
        assert (report.unchanged, report.videos, decoded) == (4, 0, [])
        os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # touched, same content
        report = g.index([media], progress=False)
        assert (report.changed, report.videos, decoded, scene_rows(g.db)) == (1, 0, [], before)
        film(video, ("cup_of_coffee", "tabby_cat"))  # another film at the same path
        report = g.index([media], progress=False)
        after = scene_rows(g.db)
        assert (report.changed, report.videos, decoded) == (1, 1, [video])
        assert min(s[0] for s in after) > max(s[0] for s in before) and after[-1][3] < 6.5  # new ids, a 6 s film
        assert len(g) == 3 + len(after)
        shutil.copy(video, media / "copy.mp4")  # a copy: its scenes copied, not decoded
        report = g.index([media], progress=False)
        with contextlib.closing(sqlite3.connect(g.db)) as conn:
            copied = conn.execute("SELECT scene, scene_start, scene_end, caption FROM photos WHERE path = ? "
                                  "ORDER BY scene", (str(media / "copy.mp4"),)).fetchall()
        assert (report.added, report.videos, len(decoded)) == (1, 0, 1)
        assert copied == [s[1:5] for s in after] and len(g) == 3 + 2 * len(after)
        (media / "copy.mp4").rename(media / "moved.mp4")  # moved: its scenes keep their ids
        report = g.index([media], progress=False)
        with contextlib.closing(sqlite3.connect(g.db)) as conn:
            moved = conn.execute("SELECT id FROM photos WHERE path = ?", (str(media / "moved.mp4"),)).fetchall()
        assert (report.moved, report.removed, report.videos, len(moved)) == (1, 0, 0, len(after))
        video.unlink()
        (media / "moved.mp4").unlink()
        assert g.index([media], progress=False).removed == 2 and scene_rows(g.db) == [] and len(g) == 3


def test_a_video_that_breaks_partway_keeps_its_scenes_and_is_recorded_as_failed(tiny, media, tmp_path):
    whole = film(tmp_path / "whole.mkv", (*FILM, "astronaut_in_orange_spacesuit")).read_bytes()
    (media / "cut.mkv").write_bytes(whole[:int(0.6 * len(whole))])
    (media / "notes.mp4").write_text("not a video\n")
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        report = g.index([media], progress=False)
        assert set(report.failed) == {str(media / "cut.mkv"), str(media / "notes.mp4")}
        assert "notes.mp4" in report.failed[str(media / "notes.mp4")]
        with contextlib.closing(sqlite3.connect(g.db)) as conn:
            kept = conn.execute("SELECT scene_end, error FROM photos WHERE path = ?",
                                (str(media / "cut.mkv"),)).fetchall()
        assert kept and all(error == report.failed[str(media / "cut.mkv")] for _, error in kept)
        assert max(end for end, _ in kept) < 12.0  # the scenes before the break
        assert [path for path, _ in g.failures()] == [str(media / "cut.mkv"), str(media / "notes.mp4")]  # once each
        again = g.index([media], progress=False)  # tried again, as failed photos are
        assert (again.retried, again.videos, set(again.failed)) == (2, 2, set(report.failed))


def test_without_the_video_extra_videos_are_skipped_with_a_word_and_photos_indexed(tiny_model_dir, media, tmp_path,
                                                                                  reuse_encoders, monkeypatch,
                                                                                  capsys):
    db = str(tmp_path / "g.db")
    args = ["index", str(media), "--db", db, "--model", str(tiny_model_dir), "--quiet"]
    assert main(args) == 0
    scenes = scene_rows(Path(db))
    monkeypatch.setattr(indexer, "video_extra_missing", lambda: "video (captioner video) needs the [video] extra, "
                        "and av is not installed: pip install 'captioner[video]'")
    capsys.readouterr()
    (media / "clip2.mp4").write_bytes((media / "clip.mp4").read_bytes())
    shutil.copy(ROOT / "examples" / "tabby_cat.jpg", media)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "2 videos skipped: video (captioner video) needs the [video] extra" in err and "pip install" in err
    assert scene_rows(Path(db)) == scenes  # the video indexed before keeps its scenes
    with Gallery.open(db, model=tiny_model_dir) as g:
        assert g.photo(max(r[0] for r in g.catalogue.conn.execute("SELECT id FROM photos"))).path.name == \
            "tabby_cat.jpg"


OLD_PHOTOS = """(
    id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, caption TEXT, alternatives TEXT, score REAL, error TEXT, indexed_at TEXT NOT NULL,
    visual BLOB, text BLOB, generation INTEGER NOT NULL DEFAULT 0, tags TEXT)"""
OLD_COLUMNS = ("id, path, sha256, size, mtime_ns, caption, alternatives, score, error, indexed_at, visual, text, "
               "generation, tags")


def test_a_gallery_from_before_videos_opens_and_takes_videos_when_indexed(tiny, media, tmp_path):
    db = tmp_path / "g.db"
    video = media / "clip.mp4"
    video.rename(tmp_path / "clip.mp4")
    with Gallery.create(db, captioner=tiny) as g:
        g.index([media], progress=False)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:  # the table as it was before videos
        conn.executescript(f"""BEGIN; CREATE TABLE old {OLD_PHOTOS}; INSERT INTO old SELECT {OLD_COLUMNS} FROM photos;
                               DROP TABLE photos; ALTER TABLE old RENAME TO photos; COMMIT;""")
        before = conn.execute("SELECT id, path, caption FROM photos ORDER BY id").fetchall()
    with Gallery.open(db, captioner=tiny) as reader:  # a reader gets the columns, and answers
        assert len(reader) == 3 and reader.photo(before[0][0]).caption == before[0][2]
        assert {m.id for m in reader.search(before[0][2], k=3)} == {r[0] for r in before}
    (tmp_path / "clip.mp4").rename(video)
    with Gallery.create(db, captioner=tiny) as g:
        report = g.index([media], progress=False)
        assert (report.unchanged, report.added, report.videos) == (3, 1, 1) and report.scenes >= 2
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert "UNIQUE (path, scene)" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'photos'"
                                                      ).fetchone()[0]
        assert conn.execute("SELECT id, path, caption FROM photos WHERE scene = 0 ORDER BY id").fetchall() == before
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert min(r[0] for r in conn.execute("SELECT id FROM photos WHERE scene > 0")) > before[-1][0]


def test_cli_search_and_similar_print_a_scene_with_its_times(tiny_model_dir, media, tmp_path, reuse_encoders, capsys):
    db = str(tmp_path / "g.db")
    model = ["--db", db, "--model", str(tiny_model_dir)]
    assert main(["index", str(media), "--json", "--quiet", *model]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["videos"] == 1 and summary["photos"] == 3 + summary["scenes"]
    second = scene_rows(Path(db))[1]
    assert main(["search", second[4], "-k", "20", *model]) == 0
    lines = capsys.readouterr().out.splitlines()
    start, end = (f"00:00:{t:04.1f}" for t in (second[2], second[3]))
    assert any(line.split(None, 1)[1].startswith(f"{media / 'clip.mp4'} {start}-{end}  {second[4]}")
               for line in lines), lines
    assert main(["similar", str(media / "clip.mp4"), "--at", str(second[2] + 0.1), "-k", "3", "--json", *model]) == 0
    similar = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(similar) == 3 and second[0] not in {m["id"] for m in similar}
    assert all({"video", "scene", "start", "end"} <= set(m) for m in similar if m["path"].endswith("clip.mp4"))
    assert main(["similar", str(tmp_path / "other.mp4"), *model]) == 1
    assert "the gallery has no scenes of" in capsys.readouterr().err
