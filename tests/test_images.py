"""Photo loading: every mode and shape to RGB, broken files to one clear PhotoError, folders to photo lists."""
from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from captioner.data.images import (
    MAX_PIXELS,
    PHOTO_SUFFIXES,
    PhotoError,
    TruncatedPhotoWarning,
    expand_paths,
    file_sha256,
    load_photo,
    to_pixels,
)
from captioner.errors import CaptionerError
from photos import BROKEN_MESSAGES, ODD_SIZES, bomb_png_bytes, gradient, make_broken_photos, make_odd_photos


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return make_odd_photos(tmp_path_factory.mktemp("odd"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return make_broken_photos(tmp_path_factory.mktemp("broken"))


def pixels(name, odd):
    return np.asarray(load_photo(odd[name])).astype(int)


@pytest.mark.parametrize("name", sorted(ODD_SIZES))
def test_every_odd_photo_loads_as_rgb_of_its_size_and_squashes_to_the_square(name, odd):
    img = load_photo(odd[name])
    assert img.mode == "RGB"
    assert img.size == ODD_SIZES[name]
    arr = to_pixels(img, 224)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8
    with_size = load_photo(odd[name], size=224)
    assert with_size.mode == "RGB"
    assert to_pixels(with_size, 224).shape == (224, 224, 3)


def test_transparent_pixels_become_white_and_opaque_ones_keep_their_colour(odd):
    rgba = pixels("rgba_png", odd)
    assert (rgba[:, :32] == 255).all()
    assert (rgba[:, 32:] == (0, 0, 255)).all()
    pal = pixels("palette_transparent_png", odd)
    assert (pal[:, :32] == 255).all() and (pal[:, 32:] == (255, 0, 0)).all()
    la = pixels("gray_alpha_png", odd)
    assert (la[:, :32] == 255).all() and (la[:, 32:] == 40).all()
    gray_t = pixels("gray_transparent_png", odd)
    assert (gray_t[:, :32] == 255).all() and (gray_t[:, 32:] == 200).all()


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(odd):
    assert Image.open(odd["gray16_png"]).mode.startswith("I;16")  # the case under test
    row = pixels("gray16_png", odd)[0]
    assert list(row[:, 0]) == [0, 128, 255]
    assert (row == row[:, :1]).all()  # grey stays grey


def test_wide_integer_and_float_images_are_scaled_by_their_range(odd):
    assert (pixels("int32_tiff", odd) == 255).all()  # 65535 in 32-bit ints
    assert (pixels("float_tiff", odd) == 128).all()  # 0.5 in 0..1 floats


def test_cmyk_cyan_stays_cyan(odd):
    for name in ("cmyk_jpeg", "cmyk_tiff"):
        r, g, b = pixels(name, odd).reshape(-1, 3).mean(axis=0)
        assert r < 30 and g > 220 and b > 220, (name, r, g, b)


def test_grey_bilevel_palette_and_ycbcr_keep_the_picture(odd):
    reference = pixels("gray_png", odd)
    assert (reference[..., 0] == reference[..., 1]).all()
    bilevel = pixels("bilevel_png", odd)
    assert set(np.unique(bilevel)) == {0, 255}
    rgb = pixels("bmp", odd)
    for name, tolerance in (("ycbcr_tiff", 4), ("rgb_jpeg", 4), ("webp", 8), ("palette_png", 25)):
        assert np.abs(pixels(name, odd) - rgb).mean() < tolerance, name


@pytest.mark.parametrize("name", ["animated_gif", "animated_webp", "animated_png"])
def test_animations_give_their_first_frame(name, odd):
    assert getattr(Image.open(odd[name]), "n_frames", 1) == 3
    assert (pixels(name, odd) == (255, 0, 0)).all()


def test_exif_orientation_is_applied(odd):
    assert Image.open(odd["exif_rotated_jpeg"]).size == (40, 20)  # stored landscape
    arr = pixels("exif_rotated_jpeg", odd)
    assert arr.shape == (40, 20, 3)  # shown portrait
    assert tuple(arr[5, 10]) == pytest.approx((255, 0, 0), abs=25)  # the left half went to the top
    assert tuple(arr[35, 10]) == pytest.approx((0, 0, 255), abs=25)
    assert load_photo(odd["exif_rotated_jpeg"], size=10).size == (10, 20)  # draft, then rotate


def test_target_size_decodes_big_jpegs_at_reduced_scale_but_never_below_it(odd):
    assert load_photo(odd["big_jpeg"], size=224).size == (500, 375)  # 1/4 scale, both sides >= 224
    assert load_photo(odd["big_jpeg"], size=1000).size == (2000, 1500)  # 1/2 would be 750 < 1000
    assert load_photo(odd["panorama_10000x50"], size=224).size == (10000, 50)  # 50 < 224: no reduction
    assert load_photo(odd["tiny_1x1"], size=224).size == (1, 1)
    full = to_pixels(load_photo(odd["big_jpeg"]), 224).astype(int)
    fast = to_pixels(load_photo(odd["big_jpeg"], size=224), 224).astype(int)
    assert np.abs(full - fast).mean() < 2  # same picture


def test_to_pixels_squashes_the_whole_photo_without_cropping():
    img = Image.new("RGB", (400, 100), (255, 0, 0))
    img.paste((0, 0, 255), (300, 0, 400, 100))  # the right quarter is blue
    arr = to_pixels(img, 64)
    assert arr.shape == (64, 64, 3) and arr.flags.writeable
    assert tuple(arr[32, 5]) == (255, 0, 0)
    assert tuple(arr[32, 60]) == (0, 0, 255)  # not cropped away
    assert tuple(arr[32, 45]) == (255, 0, 0) and tuple(arr[32, 51]) == (0, 0, 255)  # edge at 3/4 width
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert (to_pixels(rgba, 4) == 255).all()  # same conversion as load_photo
    with pytest.raises(ValueError):
        to_pixels(img, 0)


def test_names_with_upper_case_suffix_spaces_and_accents_load(odd):
    assert odd["upper_case_JPG"].name == "UPPER.JPG"
    assert odd["unicode_name"].name == "été photo ñ.png"
    for name in ("upper_case_JPG", "unicode_name"):
        assert load_photo(str(odd[name])).size == (64, 48)


@pytest.mark.parametrize("name", [n for n, phrase in BROKEN_MESSAGES.items() if phrase])
def test_broken_photos_raise_one_clear_sentence_naming_the_file(name, broken):
    with pytest.raises(PhotoError) as caught:
        load_photo(broken[name], size=224)
    message = str(caught.value)
    assert isinstance(caught.value, CaptionerError)
    assert message.startswith(f"{broken[name]}: ")
    assert BROKEN_MESSAGES[name] in message
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.path == broken[name]


def test_broken_photo_messages_are_distinct(broken):
    messages = set()
    for name, phrase in BROKEN_MESSAGES.items():
        if phrase:
            with pytest.raises(PhotoError) as caught:
                load_photo(broken[name])
            messages.add(str(caught.value).split(": ", 1)[1])
    assert len(messages) == sum(1 for p in BROKEN_MESSAGES.values() if p)


def test_decompression_bomb_is_refused_quickly_without_allocating(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png_bytes(60000, 60000))
    assert bomb.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(PhotoError, match="3,600 megapixels"):
        load_photo(bomb)
    assert time.perf_counter() - start < 1.0
    # Our own limit holds even if the process switched Pillow's off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(PhotoError, match="60000 x 60000 pixels"):
        load_photo(bomb)
    assert 60000 * 60000 > MAX_PIXELS


def test_pillows_bomb_warning_below_our_limit_does_not_leak(tmp_path, monkeypatch):
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 pixels: Pillow warns but does not refuse
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_photo(photo).size == (40, 40)


def test_truncated_jpeg_loads_what_is_there_and_warns(broken):
    with pytest.warns(TruncatedPhotoWarning, match="truncated") as caught:
        img = load_photo(broken["truncated_jpeg"], size=224)
    assert str(broken["truncated_jpeg"]) in str(caught[0].message)
    assert img.mode == "RGB" and img.size == (320, 240)
    arr = np.asarray(img).astype(int)
    assert tuple(arr[5, 5]) == pytest.approx((255, 0, 0), abs=30)  # the top band decoded
    assert (np.abs(arr[-10:] - 128) < 3).all()  # the missing bottom is grey
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the switch was only flipped for this photo


def test_a_file_cut_before_any_pixel_is_refused_not_loaded_blank(tmp_path):
    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(bomb_png_bytes(300, 200))  # declares 300 x 200, holds no pixel data
    with pytest.raises(PhotoError, match="truncated before any of the picture"):
        load_photo(header_only)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(gradient(320, 240)).save(whole)
    cut = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    cut.write_bytes(data[: data.index(b"\xff\xda") + 14])  # headers and the start-of-scan marker only
    with pytest.raises(PhotoError, match="truncated before any of the picture"):
        load_photo(cut)


def test_loading_leaves_pillows_truncation_switch_and_files_alone(broken, odd):
    with pytest.warns(TruncatedPhotoWarning):
        load_photo(broken["truncated_jpeg"])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    img = load_photo(odd["animated_gif"])
    assert np.asarray(img).shape == (32, 32, 3)  # usable after the file was closed


def test_expand_paths_walks_folders_sorted_and_keeps_named_files(tmp_path):
    root = tmp_path / "trip"
    (root / "b day").mkdir(parents=True)
    (root / "a day" / "deeper").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    (root / "album.jpg").mkdir()  # a folder named like a photo
    for rel in ["z.png", "b day/1.JPG", "a day/2.jpeg", "a day/deeper/3.WebP", "album.jpg/4.gif",
                "notes.txt", ".hidden.jpg", ".thumbnails/t.jpg", "a day/raw.cr2"]:
        (root / rel).write_bytes(b"x")
    found = expand_paths([str(root)])
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a day/2.jpeg", "a day/deeper/3.WebP", "album.jpg/4.gif", "b day/1.JPG", "z.png"]
    # Named files are kept as given whatever their suffix; missing paths too (load_photo says why).
    given = [str(root / "notes.txt"), str(root / "missing.jpg"), str(root / "album.jpg")]
    assert expand_paths(given) == [root / "notes.txt", root / "missing.jpg", root / "album.jpg" / "4.gif"]
    assert expand_paths([str(root / "z.png"), str(root)])[0] == root / "z.png"
    assert len(expand_paths([str(root), str(root)])) == 5  # listed twice, kept once
    assert expand_paths([]) == []


def test_photo_suffixes_cover_the_usual_formats():
    assert PHOTO_SUFFIXES == {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path, broken):
    photo = tmp_path / "p.bin"
    data = bytes(range(256)) * 5000  # bigger than one read chunk
    photo.write_bytes(data)
    assert file_sha256(photo) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(photo)) == hashlib.sha256(data).hexdigest()
    with pytest.raises(PhotoError, match="does not exist"):
        file_sha256(broken["missing"])
    with pytest.raises(PhotoError, match="is a folder"):
        file_sha256(broken["folder_named_jpg"])
