"""The feature cache with the real lite0 encoder: float16, keyed by (encoder, photo bytes), resumable, never stale
or corrupt."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from captioner.data.images import TruncatedPhotoWarning, file_sha256, load_photo, read_photo, to_pixels
from captioner.errors import CaptionerError
from captioner.features import cache as features
from captioner.features.cache import INDEX, FeatureCache, build_cache, encode_photos
from conftest import cached_encoder
from photos import BROKEN_MESSAGES, gradient, make_broken_photos

N_PHOTOS = 8
SHARD_SIZE = 3  # 8 photos -> shards of 3, 3 and 2


def _picture(i: int) -> np.ndarray:
    """A distinct small RGB picture per i (a gradient, rolled, with a coloured block)."""
    rgb = np.roll(gradient(64, 48), 7 * i, axis=1)
    rgb[(3 * i) % 40:(3 * i) % 40 + 8, 4 * i:4 * i + 12] = ((40 * i) % 256, 255 - 30 * i, (90 * i) % 256)
    return rgb


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """8 distinct small photos (JPEG and PNG, one name with a space) plus a byte-identical copy of the first."""
    folder = tmp_path_factory.mktemp("feature-photos")
    out = []
    for i in range(N_PHOTOS):
        path = folder / (f"photo {i}.jpg" if i % 2 == 0 else f"p{i}.png")
        Image.fromarray(_picture(i)).save(path, **({"quality": 90} if i % 2 == 0 else {}))
        out.append(path)
    copy = folder / "copy of photo 0.jpg"
    shutil.copyfile(out[0], copy)
    return [*out, copy]


def _encode_fresh(encoder, paths) -> tuple[torch.Tensor, torch.Tensor]:
    size = encoder.spec.input_size
    return encoder(np.stack([to_pixels(load_photo(p, size), size) for p in paths]))


@pytest.fixture(scope="module")
def reference(lite0, photos) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 features of each photo (the duplicate included), encoded directly, not through the cache."""
    return _encode_fresh(lite0, photos)


@pytest.fixture(scope="module")
def base_cache(lite0, photos, tmp_path_factory) -> tuple[Path, list[str]]:
    """A cache of all photos built once; tests that change it work on a copy (see `cache_copy`)."""
    root = tmp_path_factory.mktemp("cache")
    cache, hashes, failed = build_cache(lite0, photos, root, shard_size=SHARD_SIZE, batch_size=SHARD_SIZE,
                                        progress=False)
    assert failed == {}
    return root, hashes


@pytest.fixture
def cache_copy(base_cache, tmp_path) -> tuple[Path, list[str]]:
    root, hashes = base_cache
    shutil.copytree(root, tmp_path / "cache")
    return tmp_path / "cache", hashes


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """The photos the feature code decodes (each decode is one photo sent to the encoder), in order."""
    seen: list[Path] = []

    def recording_read_photo(path, size=None):
        seen.append(Path(path))
        return read_photo(path, size)

    monkeypatch.setattr(features, "read_photo", recording_read_photo)
    return seen


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within float16 rounding."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-3, atol=2e-3)


def _shard_files(folder: Path) -> list[Path]:
    return [folder / s["file"] for s in json.loads((folder / INDEX).read_text())["shards"]]


def test_cache_holds_float16_pooled_and_grid_per_photo_content_in_shards(lite0, photos, base_cache):
    root, hashes = base_cache
    assert hashes == [file_sha256(p) for p in photos]
    assert hashes[-1] == hashes[0]  # the copy has the same bytes: the same key
    folder = root / lite0.spec.key
    assert lite0.spec.key.startswith("efficientnet-lite0-224-")
    shards = _shard_files(folder)
    assert [len(load_file(str(s))["pooled"]) for s in shards] == [3, 3, 2]  # the copy was not encoded twice
    for shard in shards:
        tensors = load_file(str(shard))
        assert tensors["pooled"].dtype == np.float16 and tensors["grid"].dtype == np.float16
        assert tensors["pooled"].shape[1:] == (1280,) and tensors["grid"].shape[1:] == (49, 1280)


def test_load_returns_rows_in_the_requested_order_equal_to_a_fresh_encode(lite0, base_cache, reference):
    root, hashes = base_cache
    cache = FeatureCache.open(root, lite0.spec.key)
    order = [7, 0, 5, 5, 2, 8, 3, 1, 6, 4]  # shuffled, across shards, with repeats and the copy
    pooled, grid = cache.load([hashes[i] for i in order])
    assert pooled.dtype == torch.float16 and grid.dtype == torch.float16
    assert pooled.shape == (len(order), 1280) and grid.shape == (len(order), 49, 1280)
    _close(pooled, reference[0][order])
    _close(grid, reference[1][order])
    # Distinct photos really have distinct features (the comparison above can tell rows apart).
    assert (reference[0][0] - reference[0][1]).abs().max() > 0.05
    with pytest.raises(CaptionerError, match="no features"):
        cache.load([hashes[0], "0" * 64])


def test_a_second_build_encodes_nothing(lite0, photos, cache_copy, reads):
    root, hashes = cache_copy
    before = (root / lite0.spec.key / INDEX).read_bytes()
    cache, again, failed = build_cache(lite0, photos, root, shard_size=SHARD_SIZE, progress=False)
    assert reads == [] and failed == {} and again == hashes
    assert (root / lite0.spec.key / INDEX).read_bytes() == before


def test_a_photo_whose_bytes_change_is_encoded_again_not_served_stale(lite0, photos, cache_copy, reference,
                                                                       reads, tmp_path):
    root, hashes = cache_copy
    photo = tmp_path / "changing.jpg"
    shutil.copyfile(photos[2], photo)
    cache, (old_hash,), _ = build_cache(lite0, [photo], root, progress=False)
    assert old_hash == hashes[2] and reads == []  # same bytes as a cached photo: reused
    Image.fromarray(_picture(2)[::-1].copy()).save(photo, quality=90)  # same name, new picture
    cache, (new_hash,), failed = build_cache(lite0, [photo], root, progress=False)
    assert failed == {} and new_hash != old_hash and reads == [photo]
    pooled, grid = cache.load([new_hash])
    fresh = _encode_fresh(lite0, [photo])
    _close(pooled, fresh[0])
    _close(grid, fresh[1])
    assert (pooled.float() - reference[0][2]).abs().max() > 0.05  # not the old photo's features


def test_another_encoder_key_uses_its_own_folder_and_never_reuses_features(lite0, photos, cache_copy, reads):
    root, hashes = cache_copy
    lite0_index = (root / lite0.spec.key / INDEX).read_bytes()
    small = cached_encoder("efficientnet-lite0", 160)  # a different input size: a different key
    assert small.spec.key != lite0.spec.key
    cache, small_hashes, failed = build_cache(small, photos[:2], root, progress=False)
    assert small_hashes == hashes[:2] and failed == {}
    assert reads == photos[:2]  # encoded again, not taken from the 224 features
    assert cache.folder == root / small.spec.key and (cache.folder / INDEX).is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted([lite0.spec.key, small.spec.key])
    pooled, grid = cache.load(small_hashes)
    assert pooled.shape == (2, 1280) and grid.shape == (2, 25, 1280)  # a 5 x 5 grid at 160 pixels
    assert (root / lite0.spec.key / INDEX).read_bytes() == lite0_index


class Killed(Exception):
    """Stands for the run being killed."""


def test_an_interrupted_run_keeps_its_finished_shards_and_resumes_after_them(lite0, photos, reference, reads,
                                                                              tmp_path):
    calls = 0

    class DyingInSecondBatch:
        spec = lite0.spec

        def __call__(self, pixels):
            nonlocal calls
            calls += 1
            if calls == 2:
                raise Killed
            return lite0(pixels)

    some = photos[:5]
    root = tmp_path / "cache"
    with pytest.raises(Killed):
        build_cache(DyingInSecondBatch(), some, root, shard_size=2, batch_size=2, progress=False)
    assert len(_shard_files(root / lite0.spec.key)) == 1  # the first batch was finished and recorded
    reads.clear()
    cache, hashes, failed = build_cache(lite0, some, root, shard_size=2, batch_size=2, progress=False)
    assert failed == {} and reads == some[2:]  # only the photos not encoded before the kill
    assert len(_shard_files(root / lite0.spec.key)) == 3
    pooled, grid = cache.load(hashes)
    _close(pooled, reference[0][:5])
    _close(grid, reference[1][:5])


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    path.write_bytes(bytes(data))


def test_a_corrupt_or_partial_shard_is_detected_and_its_photos_encoded_again(lite0, photos, cache_copy,
                                                                            reference, reads, caplog):
    root, hashes = cache_copy
    folder = root / lite0.spec.key
    shards = _shard_files(folder)
    _flip_middle(shards[1])  # photos 3, 4, 5
    shards[2].write_bytes(shards[2].read_bytes()[:1000])  # photos 6, 7: cut short
    with caplog.at_level(logging.WARNING, "captioner"):
        cache = FeatureCache.open(root, lite0.spec.key)
    messages = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert all(any(str(s) in m for m in messages) for s in shards[1:])
    assert [h in cache for h in hashes] == [True, True, True, False, False, False, False, False, True]
    with pytest.raises(CaptionerError, match="no features"):
        cache.load(hashes[3:4])  # never served from the damaged shard
    caplog.clear()
    with caplog.at_level(logging.WARNING, "captioner"):
        cache, _, failed = build_cache(lite0, photos, root, shard_size=SHARD_SIZE, progress=False)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert failed == {} and reads == photos[3:N_PHOTOS]
    pooled, grid = cache.load(hashes)
    _close(pooled, reference[0])
    _close(grid, reference[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the index no longer lists the damaged shards
        reopened = FeatureCache.open(root, lite0.spec.key)
    _close(reopened.load(hashes)[1], reference[1])


def test_a_stray_shard_from_a_run_killed_mid_write_is_ignored(lite0, photos, cache_copy, reference, reads):
    root, hashes = cache_copy
    folder = root / lite0.spec.key
    whole = _shard_files(folder)[0].read_bytes()
    (folder / "shard-00003-0123abcd.safetensors").write_bytes(whole[: len(whole) // 2])  # never indexed
    (folder / f".{INDEX}.tmp").write_bytes(b'{"format": 1, "shar')  # an index rewrite cut short
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = FeatureCache.open(root, lite0.spec.key)
        cache, _, failed = build_cache(lite0, photos, root, shard_size=SHARD_SIZE, progress=False)
    assert reads == [] and failed == {} and len(cache.shards) == 3
    _close(cache.load(hashes)[0], reference[0])


@pytest.mark.parametrize("content", [
    b'{"format": 1, "encoder": "efficientnet-li',  # cut short
    b"\x00\xff\xfe binary garbage",
    b"[]",
    b'{"format": 1, "encoder": "KEY", "shards": [{"file": "shard-00000.safetensors"}]}',
    b'{"format": 1, "encoder": "KEY", "shards": 7}',
    b'{"format": 1, "encoder": "another-encoder", "shards": []}',
], ids=["truncated", "binary", "list", "shard-without-keys", "shards-not-a-list", "other-encoder"])
def test_a_damaged_index_is_a_clear_error_not_a_traceback(lite0, photos, cache_copy, content, reads):
    root, _ = cache_copy
    index = root / lite0.spec.key / INDEX
    index.write_bytes(content.replace(b"KEY", lite0.spec.key.encode()))
    for attempt in (lambda: FeatureCache.open(root, lite0.spec.key),
                    lambda: build_cache(lite0, photos, root, progress=False)):
        with pytest.raises(CaptionerError) as info:
            attempt()
        message = str(info.value)
        assert str(index) in message and "delete" in message and "\n" not in message
    assert reads == []  # nothing was encoded on top of an index we cannot read


def test_photos_that_fail_are_reported_and_do_not_stop_the_others(lite0, photos, reference, reads, tmp_path):
    broken = make_broken_photos(tmp_path / "broken")
    order = ["text_named_jpg", "empty", "bomb_png", "damaged_png", "missing", 0, "folder_named_jpg",
             "truncated_jpeg", 1]
    paths = [photos[k] if isinstance(k, int) else broken[k] for k in order]
    # batch_size 2: the first two batches hold only broken photos.
    with pytest.warns(TruncatedPhotoWarning):
        cache, hashes, failed = build_cache(lite0, paths, tmp_path / "cache", batch_size=2, progress=False)
    expected_failures = {broken[k]: BROKEN_MESSAGES[k] for k in order if isinstance(k, str) and BROKEN_MESSAGES[k]}
    assert set(failed) == set(expected_failures)
    for path, phrase in expected_failures.items():
        assert failed[path].startswith(str(path)) and phrase in failed[path] and "\n" not in failed[path]
    assert [h in cache for h in hashes] == [k in (0, 1, "truncated_jpeg") for k in order]
    pooled, grid = cache.load([hashes[5], hashes[8]])
    _close(pooled, reference[0][:2])
    _close(grid, reference[1][:2])


def test_encode_photos_decodes_the_next_batch_while_the_network_runs(lite0, photos, reference, capsys,
                                                                     monkeypatch, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    paths = [*photos[:4], text, *photos[4:N_PHOTOS]]  # 9 paths in batches of 3; the broken one in the middle
    second_batch_read = threading.Event()
    overlapped = []

    class Watching:
        spec = lite0.spec

        def __call__(self, pixels):
            if not overlapped:  # the first batch: is the second one decoded while the network runs?
                overlapped.append(second_batch_read.wait(timeout=10))
            return lite0(pixels)

    original = features.read_photo

    def noting_read_photo(path, size=None):
        if Path(path) in paths[3:6]:
            second_batch_read.set()
        return original(path, size)

    monkeypatch.setattr(features, "read_photo", noting_read_photo)
    positions, pooled, grid, errors = [], [], [], {}
    for ok, p, g, e, _, _ in encode_photos(Watching(), paths, batch_size=3, progress=True):
        assert len(ok) == len(p) == len(g)
        positions += ok
        pooled.append(p)
        grid.append(g)
        errors |= e
    assert overlapped == [True]
    assert positions == [0, 1, 2, 3, 5, 6, 7, 8]
    assert list(errors) == [4] and "not a photo" in errors[4] and errors[4].startswith(str(text))
    _close(torch.cat(pooled), reference[0][:N_PHOTOS])
    _close(torch.cat(grid), reference[1][:N_PHOTOS])
    bar = capsys.readouterr().err
    assert "9/9" in bar and ("photo/s" in bar or "s/photo" in bar)  # a progress bar with its rate


def test_a_batch_meets_the_encoder_in_chunks_with_exactly_the_features_of_one_pass(lite0, photos, reference,
                                                                                 monkeypatch):
    """Each photo is encoded on its own, so a batch can go through the network ENCODER_CHUNK photos at a
    time with the same features, and the heap holds the activations of fewer photos at once."""
    sizes = []

    class Counting:
        spec = lite0.spec

        def __call__(self, pixels):
            sizes.append(len(pixels))
            return lite0(pixels)

    monkeypatch.setattr(features, "ENCODER_CHUNK", 4)
    (batch,) = encode_photos(Counting(), photos, batch_size=len(photos), progress=False)
    assert sizes == [4, 4, 1]
    assert torch.equal(batch.pooled, reference[0]) and torch.equal(batch.grid, reference[1])


def test_a_single_batch_is_read_in_the_calling_thread(lite0, photos, monkeypatch):
    """One batch has nothing to overlap with, so no reader thread is started for it (a thread and its
    hand-over cost a single photo's caption about a millisecond)."""
    readers = []
    original = features.read_photo

    def noting_read_photo(path, size=None):
        readers.append(threading.current_thread())
        return original(path, size)

    monkeypatch.setattr(features, "read_photo", noting_read_photo)
    batches = list(encode_photos(lite0, photos[:2], batch_size=3, progress=False))
    assert [b.ok for b in batches] == [[0, 1]]
    assert readers == [threading.current_thread()] * 2


def test_captioning_reads_each_photo_once_and_never_hashes_it(tiny_model_dir, reuse_encoders, photos, monkeypatch):
    """A photo's hash keys the feature cache; a caption does not use the cache, so it never reads the file's
    bytes a second time to hash them."""
    from captioner.captioning import Captioner
    from captioner.data import images

    def hashing(*args, **kwargs):
        raise AssertionError("the caption path hashed a photo")

    for module, name in ((images, "file_sha256"), (features, "file_sha256"), (hashlib, "file_digest")):
        monkeypatch.setattr(module, name, hashing)
    reads = []
    original = features.read_photo
    monkeypatch.setattr(features, "read_photo", lambda path, size=None: reads.append(path) or original(path, size))
    captions = Captioner.load(tiny_model_dir).caption(photos[:3])
    assert [c.path for c in captions] == photos[:3] and not any(c.error for c in captions)
    assert reads == photos[:3]


def test_real_flickr8k_photos_are_cached_as_encoded(lite0, flickr8k_root, tmp_path):
    names = sorted((flickr8k_root / "Images").iterdir())[:3]
    paths = [shutil.copyfile(p, tmp_path / p.name) for p in names]
    cache, hashes, failed = build_cache(lite0, paths, tmp_path / "cache", progress=False)
    assert failed == {} and len(set(hashes)) == 3
    pooled, grid = cache.load(hashes)
    fresh = _encode_fresh(lite0, paths)
    _close(pooled, fresh[0])
    _close(grid, fresh[1])
    assert (fresh[0][0] - fresh[0][1]).abs().max() > 0.1  # different scenes, different features
