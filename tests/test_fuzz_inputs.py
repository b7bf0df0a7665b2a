"""Property-based tests (hypothesis): the corpus readers and the photo loader, fed random and mutated bytes,
give a result or a CaptionerError sentence, never another exception."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner.data import images
from captioner.data.images import PhotoError, read_photo, to_pixels
from captioner.data.readers import coco, common, flickr8k, img2dataset, karpathy, tables
from captioner.data.readers.common import Corpus
from captioner.errors import CaptionerError
from photos import gradient
from test_corpus import GOOD, IMAGES, SHARD, coco_data, karpathy_data, make_images

FUZZ = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def photo_bytes(fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gradient(24, 16)).convert("RGBA" if fmt == "PNG" else "RGB").save(out, fmt, **options)
    return out.getvalue()


PHOTOS = [photo_bytes("JPEG", quality=80), photo_bytes("JPEG", progressive=True), photo_bytes("PNG"),
          photo_bytes("GIF"), photo_bytes("WEBP"), photo_bytes("BMP"), photo_bytes("TIFF")]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes changed, a slice cut out or repeated, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "cut", "repeat", "truncate", "insert"]))
        if how == "flip":
            data[at] = draw(st.integers(0, 255))
        elif how == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif how == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
        elif how == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def inputs(seeds: list[bytes]):
    return st.one_of(st.binary(max_size=512), mutated(seeds))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=inputs(PHOTOS))
def test_the_photo_loader_gives_a_photo_or_a_sentence(folder, monkeypatch, data):
    monkeypatch.setattr(images, "MAX_PIXELS", 4_000_000)  # the same check, at a size a test can afford
    path = folder / "photo.jpg"
    path.write_bytes(data)
    try:
        img, warning = read_photo(path, 32)
    except PhotoError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") and "\n" not in message
        return
    assert img.mode == "RGB" and min(img.size) >= 1
    assert warning == "" or warning.startswith(f"{path}: the file ends early")
    assert to_pixels(img, 16).shape == (16, 16, 3)


def readable(result) -> None:
    assert isinstance(result, Corpus)
    for r in result.records:
        assert r.split in common.SPLITS and r.tokens


def read_or_refuse(read) -> None:
    try:
        readable(read())
    except CaptionerError as e:
        assert str(e).strip() and "\n" not in str(e) and "Traceback" not in str(e)


TEXT_SEEDS = {fmt: ("\n".join(lines) + "\n").encode() for fmt, lines in GOOD.items()}
JSON_SEEDS = {"karpathy": json.dumps(karpathy_data()).encode(), "coco": json.dumps(coco_data()).encode()}


def tar_seed() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in SHARD.items():
            info = tarfile.TarInfo(f"00000/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@FUZZ
@given(fmt=st.sampled_from(sorted(TEXT_SEEDS)), data=st.data())
def test_text_corpus_readers_give_records_or_a_sentence(folder, fmt, data):
    content = data.draw(inputs([TEXT_SEEDS[fmt]]))
    root = folder / "text"
    shutil.rmtree(root, ignore_errors=True)
    make_images(root / "Images")
    if fmt == "flickr8k":
        for name, listed in zip(flickr8k.FLICKR8K_SPLIT_FILES.values(), (["a.jpg", "b.jpg"], ["c.jpg"], ["d.jpg"])):
            (root / name).write_text("\n".join(listed) + "\n")
        (root / "Flickr8k.token.txt").write_bytes(content)
        read_or_refuse(lambda: flickr8k.read_flickr8k(root))
    elif fmt == "csv":
        (root / "captions.txt").write_bytes(content)
        read_or_refuse(lambda: tables.read_captions_csv(root / "captions.txt", root / "Images"))
    else:
        path = root / ("captions.csv" if fmt == "table.csv" else "captions.jsonl")
        path.write_bytes(content)
        read_or_refuse(lambda: tables.read_table(path, root / "Images"))


@FUZZ
@given(kind=st.sampled_from(sorted(JSON_SEEDS)), data=st.data())
def test_json_corpus_readers_give_records_or_a_sentence(folder, kind, data):
    root = folder / "json"
    shutil.rmtree(root, ignore_errors=True)
    make_images(root / "img", [*IMAGES, "val2014/x.jpg"])
    path = root / "captions.json"
    path.write_bytes(data.draw(inputs([JSON_SEEDS[kind]])))
    read = karpathy.read_karpathy if kind == "karpathy" else coco.read_coco
    read_or_refuse(lambda: read(path, root / "img"))


@FUZZ
@given(data=inputs([tar_seed()]))
def test_img2dataset_shards_give_records_or_a_sentence(folder, data):
    root = folder / "shards"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    (root / "00000.tar").write_bytes(data)
    read_or_refuse(lambda: img2dataset.read_img2dataset(root))
