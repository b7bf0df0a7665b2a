"""The gallery on the tiny random model: incremental indexing, failures, kills, versions, similar and search.

The model is untrained, so its captions are random words: these tests check
what the gallery does with photos and vectors, never caption wording.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import captioner.captioning
from captioner.captioning import Caption, Captioner
from captioner.cli import main
from captioner.data.images import file_sha256
from captioner.errors import CaptionerError
from captioner.gallery import Gallery, catalogue, indexer, queries
from captioner.models.embedding import FILE, Embedding, RetrievalConfig, load, save
from captioner.models.tags import tag_words
from conftest import TEST_THREADS, cached_encoder
from fakes import FakeCaptioner, fake_query_vectors, fake_text_vectors, fake_vector
from photos import gradient, make_broken_photos

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Captioner:
    return Captioner(captioner.captioning.load_model(tiny_model_dir, fast=True), cached_encoder("efficientnet-lite0"))


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of the six example photos plus two drawn ones."""
    folder = tmp_path / "photos"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("*.md"))
    Image.fromarray(gradient(96, 64)).save(folder / "gradient.png")
    (folder / "nested").mkdir()
    Image.fromarray(gradient(64, 96)[::-1].copy()).save(folder / "nested" / "flipped.jpg")
    return folder


def rows(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        return {Path(r[0]).name: r[1:] for r in conn.execute("SELECT path, id, sha256, caption, error FROM photos")}


def test_index_captions_every_photo_and_a_second_run_touches_nothing(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    g = Gallery.create(db, captioner=tiny)
    report = g.index([photos], progress=False)
    assert (report.added, report.encoded, report.unchanged, report.failed) == (8, 8, 0, {})
    assert len(g) == report.photos == 8
    stored = rows(db)
    assert all(caption and not error for _, _, caption, error in stored.values())
    again = g.index([photos], progress=False)
    assert (again.added, again.changed, again.encoded, again.unchanged, again.removed) == (0, 0, 0, 8, 0)
    assert rows(db) == stored
    g.close()


def test_paths_starting_with_a_tilde_are_in_the_users_home(tiny, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # photos: ~/photos
    monkeypatch.chdir(tmp_path / "photos" / "nested")  # not a folder named ~ here
    with Gallery.create("~/g.db", captioner=tiny) as g:  # the README's example
        assert g.db == tmp_path / "g.db"
        assert g.index(["~/photos"], progress=False).added == 8
        assert g.index([tmp_path / "photos"], progress=False).unchanged == 8  # the same photos
        assert len(g.similar("~/photos/tabby_cat.jpg", k=3)) == 3
    with Gallery.open("~/g.db", captioner=tiny) as reader:
        assert len(reader) == 8
    assert not (tmp_path / "photos" / "nested" / "~").exists()


def test_moved_copied_changed_and_removed_photos(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    g = Gallery.create(db, captioner=tiny)
    g.index([photos], progress=False)
    before = rows(db)
    (photos / "tabby_cat.jpg").rename(photos / "nested" / "cat.jpg")  # moved
    shutil.copy(photos / "cup_of_coffee.jpg", photos / "cup copy.jpg")  # copied
    Image.fromarray(gradient(50, 50)).save(photos / "gradient.png")  # changed content
    (photos / "rocky_cliff_by_a_lake.jpg").unlink()  # removed
    report = g.index([photos], progress=False)
    assert (report.moved, report.added, report.changed, report.removed, report.encoded) == (1, 1, 1, 1, 1)
    after = rows(db)
    assert after["cat.jpg"][:3] == before["tabby_cat.jpg"][:3]  # same row, same caption: nothing redone
    assert after["cup copy.jpg"][1:3] == before["cup_of_coffee.jpg"][1:3]
    assert after["gradient.png"][1] != before["gradient.png"][1]
    assert "rocky_cliff_by_a_lake.jpg" not in after and len(g) == 8
    assert g.similar(after["cat.jpg"][0], k=8, by="visual")  # the moved photo's vectors still answer
    g.close()


def test_only_photos_under_the_given_roots_are_removed(tiny, photos, tmp_path):
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    g.index([photos], progress=False)
    report = g.index([photos / "nested"], progress=False)
    assert (report.removed, report.unchanged, len(g)) == (0, 1, 8)
    g.close()


def test_failed_photos_are_recorded_and_never_stop_the_run(tiny, photos, tmp_path):
    broken = make_broken_photos(tmp_path / "broken")
    shutil.copytree(tmp_path / "broken", photos / "broken", ignore=shutil.ignore_patterns("x.jpg"))
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    report = g.index([photos], progress=False)
    failed = {Path(p).name for p in report.failed}
    assert failed == {"empty.jpg", "notes.jpg", "bomb.png", "damaged.png"}
    assert all(Path(p).name in reason for p, reason in report.failed.items())
    assert {Path(p).name for p, _ in g.failures()} == failed
    assert len(g) == 8 + 1  # the truncated JPEG loads (with a warning) and is captioned
    again = g.index([photos], progress=False)
    assert again.failed.keys() == report.failed.keys() and len(g.failures()) == 4  # failures: listed again,
    assert (again.retried, again.unchanged, again.encoded) == (4, 9, 0)  # as they are tried again, every run
    assert broken  # the factory ran
    g.close()


def failing_on(captioner: Captioner, name: str, monkeypatch) -> None:
    """Make `captioner.stream` fail to read the photo called `name`, as a passing read error would."""
    real_stream = captioner.stream

    def stream(paths, **kw):
        for c in real_stream(paths, **kw):
            yield Caption(c.path, error=f"{c.path}: cannot be read (Input/output error; check the file)") \
                if c.path.name == name else c

    monkeypatch.setattr(captioner, "stream", stream)


def test_a_captioned_photo_that_fails_to_read_keeps_its_caption_and_is_retried(tiny, photos, tmp_path,
                                                                                monkeypatch):
    db = tmp_path / "g.db"
    g = Gallery.create(db, captioner=tiny)
    g.index([photos], progress=False)
    before = rows(db)["tabby_cat.jpg"]
    cat = photos / "tabby_cat.jpg"
    Image.open(cat).rotate(180).save(cat)  # new content: to be captioned again
    failing_on(tiny, "tabby_cat.jpg", monkeypatch)
    report = g.index([photos], progress=False)
    assert list(report.failed) == [str(cat)] and "cannot be read" in report.failed[str(cat)]
    after = rows(db)["tabby_cat.jpg"]
    assert after[:3] == before[:3] and "cannot be read" in after[3]  # its row, caption and all, kept
    assert len(g) == 8 and g.photo(before[0]).caption == before[2]
    assert g.similar(before[0], k=3, by="visual")  # and its vectors
    assert g.failures() == [(str(cat), report.failed[str(cat)])]
    monkeypatch.undo()
    again = g.index([photos], progress=False)
    _, sha, caption, error = rows(db)["tabby_cat.jpg"]
    assert sha != before[1] and caption and error is None and len(g) == 8
    assert (again.retried, again.encoded, again.failed, g.failures()) == (1, 1, {}, [])
    g.close()


def test_a_linked_photo_whose_target_is_away_keeps_its_caption_and_comes_back(tiny, photos, tmp_path):
    drive = tmp_path / "drive"  # as if on a drive that is not mounted during the second run
    drive.mkdir()
    Image.fromarray(gradient(50, 70)).save(drive / "linked.png")
    (photos / "linked.png").symlink_to(drive / "linked.png")
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        g.index([photos], progress=False)
        before = rows(g.db)["linked.png"]
        drive.rename(tmp_path / "unmounted")
        away = g.index([photos], progress=False)
        assert list(away.failed) == [str(photos / "linked.png")] and away.removed == 0
        assert rows(g.db)["linked.png"][:3] == before[:3] and len(g) == 9  # kept, its failure noted
        assert [p for p, _ in g.failures()] == [str(photos / "linked.png")]
        (tmp_path / "unmounted").rename(drive)
        back = g.index([photos], progress=False)
        assert (back.retried, back.encoded, back.failed, g.failures()) == (1, 0, {}, [])
        assert rows(g.db)["linked.png"] == before  # the same row again, nothing redone


def test_a_photo_that_failed_is_captioned_on_the_next_run(tiny, photos, tmp_path, monkeypatch):
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    failing_on(tiny, "gradient.png", monkeypatch)
    first = g.index([photos], progress=False)
    assert list(first.failed) == [str(photos / "gradient.png")] and len(g) == 7
    monkeypatch.undo()
    again = g.index([photos], progress=False)  # the same file, unchanged, readable now
    assert rows(g.db)["gradient.png"][2] and g.failures() == [] and len(g) == 8
    assert (again.retried, again.unchanged, again.encoded, again.failed) == (1, 7, 1, {})
    g.close()


def test_an_interrupted_run_keeps_its_batches_and_resumes(tiny, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(indexer, "COMMIT_EVERY", 3)
    db = tmp_path / "g.db"
    g = Gallery.create(db, captioner=tiny)
    real_stream = tiny.stream

    def stream_then_interrupt(paths, **kw):
        for n, c in enumerate(real_stream(paths, **kw)):
            if n == 5:
                raise KeyboardInterrupt
            yield c

    monkeypatch.setattr(tiny, "stream", stream_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        g.index([photos], progress=False, batch_size=2)
    g.close()
    monkeypatch.undo()
    reader = Gallery.open(db, captioner=tiny)
    assert len(reader) == 3  # one committed batch of three
    reader.close()
    g = Gallery.create(db, captioner=tiny)
    report = g.index([photos], progress=False)
    assert (report.unchanged, report.encoded, len(g)) == (3, 5, 8)
    g.close()


SAYS_WHEN_IT_COMMITS = """
import sys
from captioner.cli import main
from captioner.gallery import indexer

commit = indexer._commit

def commit_and_say(g, captions, *rest):
    commit(g, captions, *rest)
    if captions:
        print("committed", flush=True)

indexer.COMMIT_EVERY = 8
indexer._commit = commit_and_say
sys.exit(main(sys.argv[1:]))
"""
"""`captioner ...` that prints a line each time `index` has committed a batch."""


def test_a_kill_at_any_moment_leaves_a_usable_gallery(tiny_model_dir, photos, tmp_path):
    db = tmp_path / "g.db"
    many = tmp_path / "many"
    many.mkdir()
    for i in range(60):
        Image.fromarray(np.roll(gradient(80, 60), i * 3, axis=1)).save(many / f"{i:02d}.jpg")
    env = os.environ | {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(TEST_THREADS)}
    child = subprocess.Popen([sys.executable, "-c", SAYS_WHEN_IT_COMMITS, "index", str(many), "--db", str(db),
                              "--model", str(tiny_model_dir), "--batch-size", "4", "--quiet"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "committed\n", child.stderr.read()  # the first batch of 8 is in
    child.send_signal(signal.SIGKILL)  # while it captions the next ones
    child.wait()
    child.stdout.close()
    child.stderr.close()
    done = _count(db)
    assert 0 < done < 60, "the kill should land mid-run"
    g = Gallery.create(db, model=tiny_model_dir)
    assert len(g) == done  # vector indexes caught up with the catalogue
    report = g.index([many], progress=False)
    assert (report.unchanged, report.encoded, len(g)) == (done, 60 - done, 60)
    g.close()


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM photos").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


class WiderCaptioner(FakeCaptioner):
    """The fake captioner of another model (its own folder), whose encoder's vectors are twice as long."""

    def __init__(self, model_folder: Path):
        model_folder.mkdir(exist_ok=True)
        (model_folder / "model.safetensors").write_bytes(b"another model")
        super().__init__(model_folder)
        self.encoder.spec.dim *= 2

    def stream(self, paths, batch_size=16):
        for c in super().stream(paths, batch_size):
            c.vector = np.concatenate([c.vector, -c.vector]) / np.sqrt(2)
            yield c


def fake_photos(folder: Path, numbers) -> Path:
    """Files the fake captioner captions "photo N"."""
    folder.mkdir()
    for i in numbers:
        (folder / f"{i:03d}.jpg").write_bytes(f"photo {i}".encode())
    return folder


def assert_vectors_are_the_catalogues(g: Gallery) -> None:
    with contextlib.closing(sqlite3.connect(g.db)) as conn:
        stored = conn.execute("SELECT id, visual FROM photos").fetchall()
    assert len(g) == len(stored)
    np.testing.assert_allclose(g.vectors.visual.vectors([i for i, _ in stored]),
                               np.stack([np.frombuffer(v, np.float16) for _, v in stored]), atol=1e-3)


def test_a_rebuild_with_a_model_of_other_vector_sizes_rebuilds_the_vector_indexes(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(indexer, "photo_vectors", fake_text_vectors)
    folder = fake_photos(tmp_path / "photos", range(12))
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=FakeCaptioner(tiny_model_dir)) as g:
        g.index([folder], progress=False)  # its vector indexes saved, of 8 numbers per photo
    wider = WiderCaptioner(tmp_path / "wider")
    with Gallery.create(db, captioner=wider, rebuild=True) as g:
        assert g.index([folder], progress=False).encoded == 12
        assert g.vectors.visual.dim == 16 and g.similar(rows(db)["003.jpg"][0], k=2, by="visual")
        assert_vectors_are_the_catalogues(g)
    with Gallery.open(db, captioner=wider) as reader:
        assert_vectors_are_the_catalogues(reader)


def test_vector_indexes_left_by_another_gallery_are_never_used(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(indexer, "photo_vectors", fake_text_vectors)
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=FakeCaptioner(tiny_model_dir)) as g:
        g.index([fake_photos(tmp_path / "old", range(12))], progress=False)
    db.unlink()  # the catalogue deleted, its vector indexes (g.db.vectors) left behind
    monkeypatch.setattr(Gallery, "save_vectors", lambda self: None)  # a new one, killed before it saved its own
    with Gallery.create(db, captioner=FakeCaptioner(tiny_model_dir)) as g:
        g.index([fake_photos(tmp_path / "new", range(100, 112))], progress=False)
    with Gallery.open(db, captioner=FakeCaptioner(tiny_model_dir)) as reader:
        assert_vectors_are_the_catalogues(reader)


def test_readers_see_what_the_indexer_commits(tiny, photos, tmp_path, monkeypatch):
    db = tmp_path / "g.db"
    writer = Gallery.create(db, captioner=tiny)
    writer.index([photos / "nested"], progress=False)
    reader = Gallery.open(db, captioner=tiny)
    assert len(reader) == 1
    writer.index([photos], progress=False)
    assert len(reader) == 8
    assert {m.path.name for m in reader.search("a dog", k=8)} == {p.name for p in photos.rglob("*") if p.is_file()}
    with sqlite3.connect(db) as conn:  # the writer saved its vector indexes and pruned the removal log
        assert conn.execute("SELECT count(*) FROM removed").fetchone()[0] == 0
    (photos / "tabby_cat.jpg").unlink()
    Image.fromarray(gradient(40, 40)).save(photos / "gradient.png")
    monkeypatch.setattr(writer, "save_vectors", lambda: None)  # mid-run: only the catalogue has the news
    writer.index([photos], progress=False)
    found = {m.path.name for m in reader.search("a cat", k=8)}
    assert len(reader) == 7 and "tabby_cat.jpg" not in found and "gradient.png" in found
    assert reader.vectors.text.vectors([rows(db)["gradient.png"][0]]).shape == (1, 384)  # the changed photo's new row
    with pytest.raises(CaptionerError, match="another `captioner index` is writing"):
        Gallery.create(db, captioner=tiny)
    writer.close()
    reader.close()


def test_galleries_of_other_versions_and_models_say_what_to_do(tiny, photos, tmp_path, tiny_model_dir):
    db = tmp_path / "g.db"
    Gallery.create(db, captioner=tiny).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(CaptionerError, match="upgrade captioner"):
        Gallery.open(db, captioner=tiny)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    with pytest.raises(CaptionerError, match="--rebuild"):
        Gallery.open(db, captioner=tiny)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
        conn.execute("UPDATE meta SET value = 'another' WHERE key = 'model'")
    with pytest.raises(CaptionerError, match="earlier version of the model.*--rebuild"):  # same folder, new files
        Gallery.open(db, captioner=tiny)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '/elsewhere/model' WHERE key = 'model_folder'")
    with pytest.raises(CaptionerError, match="another model"):
        Gallery.open(db, captioner=tiny)
    Gallery.create(db, captioner=tiny, rebuild=True).close()
    Gallery.open(db, captioner=tiny).close()
    with pytest.raises(CaptionerError, match="no gallery"):
        Gallery.open(tmp_path / "none.db", captioner=tiny)
    (tmp_path / "notes.db").write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(CaptionerError, match="not a captioner gallery"):
        Gallery.open(tmp_path / "notes.db", captioner=tiny)


def test_a_gallery_another_process_locks_says_so_and_loses_nothing(tiny, photos, tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "BUSY_SECONDS", 0.05)  # instead of waiting 30 s for the lock
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos / "nested"], progress=False)
        other = sqlite3.connect(db, isolation_level=None)  # say, an sqlite3 shell in the middle of a change
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(CaptionerError, match=f"^{db} is locked by another process: close the program"):
            g.index([photos], progress=False)
        other.execute("ROLLBACK")
        assert len(g) == 1 and g.index([photos], progress=False).encoded == 7
    other.execute("PRAGMA journal_mode=DELETE")  # the other process takes the whole file for itself
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(CaptionerError, match="is locked by another process"):
        Gallery.open(db, captioner=tiny)
    other.close()


def test_a_gallery_that_cannot_be_written_says_so(tiny, photos, tmp_path, monkeypatch):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos / "nested"], progress=False)
    connect = sqlite3.connect  # the file read-only to this process (permissions cannot stop root, who runs CI)
    monkeypatch.setattr(sqlite3, "connect", lambda path, **kw: connect(f"file:{path}?mode=ro", uri=True, **kw))
    with Gallery.create(db, captioner=tiny) as g:
        assert len(g) == 1  # reading works
        with pytest.raises(CaptionerError, match=f"^{db} cannot be written: check the permissions"):
            g.index([photos], progress=False)
    monkeypatch.undo()
    assert len(rows(db)) == 1


def test_a_gallery_whose_folder_cannot_be_made_says_which_and_why(tiny_model_dir, photos, tmp_path, reuse_encoders,
                                                                   capsys):
    (tmp_path / "notes").write_text("a file, where the gallery's folder would go")
    db = tmp_path / "notes" / "galleries" / "g.db"
    assert main(["index", str(photos), "--db", str(db), "--model", str(tiny_model_dir), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"captioner: error: cannot make the folder {db.parent} for the gallery (Not a directory)")
    assert "--db" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_says_so_and_keeps_what_was_committed(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos / "nested"], progress=False)
        pages = g.catalogue.conn.execute("PRAGMA page_count").fetchone()[0]
        g.catalogue.conn.execute(f"PRAGMA max_page_count = {pages}")  # no room to grow: as on a full disk
        with pytest.raises(CaptionerError, match=f"^the disk holding {db} is full: free some space"):
            g.index([photos], progress=False)
    with Gallery.create(db, captioner=tiny) as g:
        assert len(g) == 1 and g.index([photos], progress=False).encoded == 7


def test_a_damaged_gallery_or_a_folder_is_named_for_what_it_is(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos], progress=False)
    with open(db, "r+b") as f:  # overwrite every page after the first (the schema) with noise
        f.seek(4096)
        f.write(np.random.default_rng(0).integers(0, 256, db.stat().st_size - 4096, np.uint8).tobytes())
    with pytest.raises(CaptionerError, match=f"^{db} is damaged .*: move it away and index the photos again"):
        Gallery.open(db, captioner=tiny)
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(CaptionerError, match="folder.db cannot be opened: check that it is a file"):
        Gallery.create(tmp_path / "folder.db", captioner=tiny)


def test_similar_finds_a_near_duplicate_and_leaves_the_photo_out(tiny, photos, tmp_path):
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    g.index([photos], progress=False)
    outside = tmp_path / "brighter cat.jpg"
    cat = Image.open(photos / "tabby_cat.jpg")
    Image.fromarray(np.clip(np.asarray(cat, np.int16) + 12, 0, 255).astype(np.uint8)).resize(
        (cat.width // 2, cat.height // 2)).save(outside)
    for by in ("visual", "both"):
        found = g.similar(outside, k=3, by=by)
        assert found[0].path.name == "tabby_cat.jpg", by
        assert len(found) == 3 and [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    inside = g.similar(photos / "tabby_cat.jpg", k=20, by="visual")
    assert len(inside) == 7 and "tabby_cat.jpg" not in {m.path.name for m in inside}
    cat_id = rows(g.db)["tabby_cat.jpg"][0]
    by_id = g.similar(cat_id, k=20, by="visual")
    assert [m.id for m in by_id] == [m.id for m in inside]
    np.testing.assert_allclose([m.score for m in by_id], [m.score for m in inside], atol=2e-3)
    assert g.similar(cat_id, k=3, by="caption")
    with pytest.raises(CaptionerError, match="unknown similarity"):
        g.similar(cat_id, by="colour")
    g.close()


def test_search_finds_a_photo_by_its_caption_and_reranks(tiny, photos, tmp_path):
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    g.index([photos], progress=False)
    stored = rows(g.db)
    for name in ("tabby_cat.jpg", "gradient.png"):
        found = g.search(stored[name][2], k=3)
        assert found[0].path.name == name and found[0].caption == stored[name][2]
    reranked = g.search(stored["tabby_cat.jpg"][2], k=8, rerank=True)
    assert len(reranked) == 8 and [m.score for m in reranked] == sorted((m.score for m in reranked), reverse=True)
    assert reranked[0].path.name == "tabby_cat.jpg"  # the model wrote this caption for it: most likely there
    with pytest.raises(CaptionerError, match="empty"):
        g.search("  ")
    g.close()


def _random_embedding(feature_dim: int = 1280, cells: int = 49) -> Embedding:
    torch.manual_seed(0)
    return Embedding(RetrievalConfig(width=32, heads=2, weak_score=0.5), feature_dim, cells).eval()


def test_an_embedding_adds_image_vectors_and_search_says_why(tiny_model_dir, photos, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    save(model, _random_embedding())
    c = Captioner(captioner.captioning.load_model(model, fast=True), cached_encoder("efficientnet-lite0"))
    assert c.caption([photos / "cup_of_coffee.jpg"])[0].embedding is None  # plain captioning skips the search space
    c.search = True
    first = c.caption([photos / "cup_of_coffee.jpg"])[0]
    assert first.embedding.shape == (384,) and abs(float(np.linalg.norm(first.embedding)) - 1) < 1e-4
    g = Gallery.create(tmp_path / "g.db", captioner=c)
    g.index([photos], progress=False)
    assert g.vectors.text.dim == 768
    caption = rows(g.db)["cup_of_coffee.jpg"][2]
    found = g.search(caption, k=8)
    assert len(found) == 8 and [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    for m in found:
        assert set(m.why) == {"caption", "photo", "tags"} and m.score == pytest.approx(sum(m.why.values()))
        assert m.weak == (m.why["caption"] + m.why["photo"] < 0.5)
        assert m.to_json()["matched_by"] in ("caption", "photo", "tags")
    reranked = g.search(caption, k=3, rerank=True)
    assert all("likelihood" in m.why and m.score == pytest.approx(sum(m.why.values())) for m in reranked)
    g.close()
    with pytest.raises(CaptionerError, match="another model"):  # the embedding is part of the model's identity
        Gallery.open(tmp_path / "g.db", model=tiny_model_dir)
    save(model, _random_embedding(), record={"trained": "again"})  # the same folder, another embedding file
    with pytest.raises(CaptionerError, match="earlier version of the model.*--rebuild"):  # never mixed
        Gallery.open(tmp_path / "g.db", model=model)


def test_an_embedding_an_older_captioner_trained_is_ignored_with_a_warning(tiny_model_dir, tmp_path, caplog):
    from safetensors.torch import save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    save_file({"mean": torch.zeros(4)}, str(model / FILE), metadata={"config": "{}"})  # format 1: no "format"
    with caplog.at_level(logging.WARNING, "captioner"):
        assert load(model) is None
    assert re.search("older captioner.*captioner align", caplog.text)


def test_train_embedding_learns_what_a_cell_of_the_grid_shows():
    """Each photo shows one of 8 things in one random cell of its grid; its caption names the thing.
    Trained on 240 photos, the embedding finds, for each thing's caption, a held-out photo showing it."""
    from captioner.training.align import AlignConfig, Pairs, train_embedding

    things = ["dog", "cat", "car", "boat", "tree", "horse", "bicycle", "bird"]
    g = torch.Generator().manual_seed(1)
    patterns = 3 * torch.randn(len(things), 64, generator=g)

    def pairs(n: int, name: str) -> Pairs:
        kind = torch.arange(n) % len(things)
        grid = torch.randn(n, 16, 64, generator=g)
        grid[torch.arange(n), torch.randint(0, 16, (n,), generator=g)] += patterns[kind]
        return Pairs(grid.mean(1), grid, [[f"a photo of a {things[k]}", f"there is a {things[k]} here"]
                                          for k in kind.tolist()], name)

    embedding, history = train_embedding([pairs(240, "train")], [dev := pairs(80, "dev")],
                                         RetrievalConfig(width=64, heads=4),
                                         AlignConfig(epochs=6, batch_size=8, lr=3e-3), progress=False)
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    texts = embedding.text([f"a photo of a {t}" for t in things])
    best = (texts @ embedding.images(dev.pooled, dev.grid).T).argmax(1)  # [8] the best dev photo per thing
    assert [k % len(things) for k in best.tolist()] == list(range(len(things)))


def test_cli_index_search_similar(tiny_model_dir, photos, tmp_path, reuse_encoders, capsys):
    db = str(tmp_path / "g.db")
    broken = photos / "notes.jpg"
    broken.write_text("not a photo")
    assert main(["index", str(photos), "--db", db, "--model", str(tiny_model_dir), "--json", "--quiet"]) == 1
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[0] == {"path": str(broken), "error": out[0]["error"]} and "notes.jpg" in out[0]["error"]
    assert out[-1]["added"] == 9 and out[-1]["photos"] == 8
    assert main(["index", str(photos), "--db", db, "--model", str(tiny_model_dir), "--json", "--quiet"]) == 1
    again = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # the failure, tried and listed again
    assert again[0]["path"] == str(broken) and (again[-1]["retried"], again[-1]["unchanged"]) == (1, 8)
    assert main(["search", "a man", "-k", "3", "--db", db, "--model", str(tiny_model_dir), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["rank"] for m in lines] == [1, 2, 3]
    assert set(lines[0]) == {"rank", "id", "path", "caption", "score", "tags", "why", "matched_by", "weak"}
    assert set(lines[0]["why"]) == {"caption", "tags"} and lines[0]["weak"] is False  # no embedding: no photo part
    assert lines[0]["score"] == pytest.approx(sum(lines[0]["why"].values()), abs=1e-3)
    queries = tmp_path / "queries.txt"
    queries.write_text("a dog\n\na red ball on the grass\n")
    assert main(["search", "--queries", str(queries), "-k", "2", "--db", db, "--model", str(tiny_model_dir)]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["query"] for a in answers] == ["a dog", "a red ball on the grass"]
    assert all(len(a["paths"]) == 2 == len(a["scores"]) == len(a["weak"]) for a in answers)
    assert main(["similar", str(photos / "tabby_cat.jpg"), "-k", "2", "--db", db, "--model",
                 str(tiny_model_dir), "--json"]) == 0
    similar = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(similar) == 2 and "why" not in similar[0]  # why and weak belong to searches
    with pytest.raises(SystemExit) as usage:  # neither TEXT nor --queries: a usage error
        main(["search", "--db", db])
    assert usage.value.code == 2 and "one of the arguments TEXT --queries is required" in capsys.readouterr().err


def test_vector_search_leaves_torch_threads_alone():
    """faiss answers on one OpenMP thread; torch shares the setting and must keep its own two."""
    code = ("import numpy as np, torch\n"
            "from captioner.gallery.vectorindex import VectorIndex\n"
            "index = VectorIndex(8); index.add(np.arange(3), np.eye(3, 8))\n"
            "assert index.search(np.eye(1, 8), 2)[1][0][0] == 0\n"
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=os.environ | {"PYTHONPATH": str(SRC),
                                                                          "OMP_NUM_THREADS": "2"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2"]


def test_search_ranks_a_photo_tagged_with_a_query_word_higher_and_shows_its_tags(tiny, photos, tmp_path,
                                                                                  monkeypatch):
    g = Gallery.create(tmp_path / "g.db", captioner=tiny)
    g.index([photos], progress=False)
    found = g.search("a cat", k=8)
    cat = found[0]
    assert cat.path.name == "tabby_cat.jpg"  # the tiny model's captions are random words: the tag did it
    cat_tags = [t for t in cat.tags if "cat" in tag_words(t)]
    assert cat_tags and all(0 < t["p"] <= 1 for t in cat.tags)
    assert cat.to_json()["tags"][0].keys() == {"word", "label", "p"}
    assert cat.why["tags"] == pytest.approx(0.5 * sum(t["p"] for t in cat_tags), abs=1e-4)  # no embedding: 0.5
    monkeypatch.setattr(queries, "RetrievalConfig", lambda: RetrievalConfig(tag_weight=0.0))
    plain = {m.path.name: m.score for m in g.search("a cat", k=8)}
    assert cat.score - plain["tabby_cat.jpg"] == pytest.approx(0.5 * sum(t["p"] for t in cat_tags), abs=1e-4)
    assert all(m.score == pytest.approx(plain[m.path.name], abs=1e-4) for m in found[1:]
               if not any("cat" in tag_words(t) for t in m.tags))
    g.close()


def newest(db: Path) -> tuple[int, Path]:
    """The id and path of the photo with the highest id."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        i, path = conn.execute("SELECT id, path FROM photos ORDER BY id DESC LIMIT 1").fetchone()
    return i, Path(path)


def schema(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT sql FROM sqlite_master WHERE name = 'photos'").fetchone()[0]


def make_old(db: Path) -> None:
    """Make `db` a gallery as captioner wrote them before photo ids were AUTOINCREMENT (ids could come back)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA writable_schema=ON")
        conn.execute("UPDATE sqlite_master SET sql = replace(sql, ' AUTOINCREMENT', '') WHERE name = 'photos'")
        conn.execute("DELETE FROM sqlite_sequence")
    assert "AUTOINCREMENT" not in schema(db)


def test_photo_ids_are_never_reused(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos], progress=False)
        last, path = newest(db)
        path.unlink()
        g.index([photos], progress=False)
        Image.fromarray(gradient(30, 30)).save(photos / "new.png")
        g.index([photos], progress=False)
        assert rows(db)["new.png"][0] > last  # not the removed photo's id: its old URL finds nothing
        last = rows(db)["new.png"][0]
    with Gallery.create(db, captioner=tiny, rebuild=True) as g:
        g.index([photos], progress=False)
        assert min(r[0] for r in rows(db).values()) > last


def test_an_old_gallery_gets_ids_that_are_never_reused_when_indexed_again(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos], progress=False)
    make_old(db)
    before = rows(db)
    with Gallery.open(db, captioner=tiny) as reader:  # reading an old gallery changes nothing
        assert len(reader) == 8
    assert "AUTOINCREMENT" not in schema(db)
    with Gallery.create(db, captioner=tiny) as g:  # opened to write: upgraded in place
        assert "AUTOINCREMENT" in schema(db) and rows(db) == before and len(g) == 8
        last, path = newest(db)
        path.unlink()
        Image.fromarray(gradient(30, 30)).save(photos / "new.png")
        report = g.index([photos], progress=False)
        assert (report.removed, report.added, report.unchanged) == (1, 1, 7)
        new, _, caption, _ = rows(db)["new.png"]
        assert new > last and len(g) == 8 and new in {m.id for m in g.search(caption, k=8)}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        triggers = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert triggers == {"photos_written", "photos_removed"} and {"photos_sha256", "photos_generation"} <= indexes


def test_the_rerank_cache_never_serves_another_photos_features(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos], progress=False)
    make_old(db)
    cat = rows(db)["tabby_cat.jpg"]
    with Gallery.open(db, captioner=tiny) as reader:  # a long-lived reader, say the web app
        reader.search(cat[2], k=8, rerank=True)  # every photo re-encoded and kept for the next queries
        other = tmp_path / "other.png"
        Image.fromarray(gradient(90, 90)).save(other)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # an older captioner gave its id to another
            conn.execute("UPDATE photos SET path = ?, sha256 = ? WHERE id = ?",
                         (str(other), file_sha256(other), cat[0]))
        cached = {m.id: m.why["likelihood"] for m in reader.search(cat[2], k=8, rerank=True)}
    with Gallery.open(db, captioner=tiny) as fresh:
        encoded = {m.id: m.why["likelihood"] for m in fresh.search(cat[2], k=8, rerank=True)}
    assert cached == pytest.approx(encoded, abs=1e-4)


def test_an_old_gallery_gets_the_tags_column_when_opened(tiny, photos, tmp_path):
    db = tmp_path / "g.db"
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos / "nested"], progress=False)
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE photos DROP COLUMN tags")
    with Gallery.open(db, captioner=tiny) as reader:
        assert [m.tags for m in reader.search("a dog")] == [[]]  # indexed before tags: none, and no error
    with sqlite3.connect(db) as conn:
        assert "tags" in {r[1] for r in conn.execute("PRAGMA table_info(photos)")}
    with Gallery.create(db, captioner=tiny) as g:
        g.index([photos], progress=False)
        assert all(m.tags for m in g.search("a dog", k=8) if m.path.name != "flipped.jpg")


def test_a_symlinked_photo_leaves_the_gallery_with_its_link(tiny, photos, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(gradient(50, 70)).save(outside / "linked.png")
    (photos / "linked.png").symlink_to(outside / "linked.png")
    with Gallery.create(tmp_path / "g.db", captioner=tiny) as g:
        g.index([photos], progress=False)
        assert "linked.png" in rows(g.db) and len(g) == 9
        (photos / "linked.png").unlink()
        report = g.index([photos], progress=False)
        assert report.removed == 1 and "linked.png" not in rows(g.db) and len(g) == 8


def test_eight_threads_query_while_an_indexer_commits_500_photos(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(indexer, "COMMIT_EVERY", 10)
    monkeypatch.setattr(indexer, "photo_vectors", fake_text_vectors)
    monkeypatch.setattr(queries, "query_vectors", fake_query_vectors)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(0, 1000, 10):
        (folder / f"{i:03d}.jpg").write_bytes(f"photo {i}".encode())
    db = tmp_path / "g.db"
    fake = FakeCaptioner(tiny_model_dir)
    writer = Gallery.create(db, captioner=fake)
    writer.index([folder], progress=False)
    reader = Gallery.open(db, captioner=fake)
    changed = {i for i in range(1000) if i % 10 == 0}  # while the readers ask, batches of 10 replace these
    for i in range(1000):  # 100 photos' rows (new content: a new row, the old one gone) and add 400 new
        if i % 10 in (0, 1, 3, 5, 7):
            (folder / f"{i:03d}.jpg").write_bytes(f"photo {i} {'again' if i in changed else 'new'}".encode())
    done = threading.Event()

    def query(n: int) -> int:
        rng = np.random.default_rng(n)
        asked = 0
        while not done.is_set() or asked < 5:
            text = f"photo {rng.integers(1000):03d} cat" if n % 2 else f"photo {rng.integers(1000):03d}"
            found = reader.search(text, k=5)
            assert len(found) == 5  # the gallery always holds at least 100 photos
            q = fake_vector(text, 384)
            for m in found:  # each answer's row and vector are the same photo's
                assert m.caption == f"photo {m.path.stem}"
                bonus = 0.5 * sum(t["p"] for t in m.tags) if n % 2 else 0.0
                assert m.score == pytest.approx(float(q @ fake_vector(m.caption, 384)) + bonus, abs=5e-3)
            try:
                like = reader.similar(found[0].id, k=4, by="visual" if n % 3 else "both")
            except CaptionerError as e:  # its row replaced since the search: a later committed state
                assert int(found[0].path.stem) in changed and "no photo with id" in str(e)
                like = []
            assert found[0].id not in {m.id for m in like}
            assert all(m.caption == f"photo {m.path.stem}" for m in like)
            assert [m.score for m in like] == sorted((m.score for m in like), reverse=True)
            asked += 1
        return asked

    with ThreadPoolExecutor(8) as pool:
        readers = [pool.submit(query, n) for n in range(8)]
        report = writer.index([folder], progress=False)
        done.set()
        asked = [r.result() for r in readers]  # re-raises any reader's error
    assert (report.changed, report.added, report.encoded, len(reader)) == (100, 400, 500, 500)
    assert min(asked) >= 5
    writer.close()
    reader.close()


def test_cli_search_and_similar_close_the_gallery(tiny_model_dir, photos, tmp_path, reuse_encoders, monkeypatch,
                                                  capsys):
    db = str(tmp_path / "g.db")
    assert main(["index", str(photos / "nested"), "--db", db, "--model", str(tiny_model_dir), "--quiet"]) == 0
    closed = []
    real_close = Gallery.close
    monkeypatch.setattr(Gallery, "close", lambda self: closed.append(self.db) or real_close(self))
    assert main(["search", "a dog", "--db", db, "--model", str(tiny_model_dir)]) == 0
    assert main(["similar", str(photos / "tabby_cat.jpg"), "--db", db, "--model", str(tiny_model_dir)]) == 0
    assert closed == [Path(db), Path(db)]
    capsys.readouterr()
