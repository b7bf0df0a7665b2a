"""The encoder split at a block boundary, and its top fine-tuned with the decoder ([train] encoder_top): the split
gives the whole encoder's features, training moves only the top's weights (never its BatchNorm statistics), the
model folder carries the top and every caption path uses it, resume carries it, and encoder_top = 0 is the frozen
encoder as before."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioner.captioning import Captioner
from captioner.data.images import load_photo, to_pixels
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache, build_cache
from captioner.features.splits import model_features
from captioner.models.decode import decode
from captioner.models.encoders.base import with_tuned_top
from captioner.models.folder import TOP_FILE, load_model
from captioner.training.config import config_from_dict
from captioner.training.train import CHECKPOINT, train
from conftest import TINY_ENCODER, cached_encoder
from test_train import assert_same_checkpoints, mini_corpus, tiny_config  # noqa: F401  (a fixture)


def _top_config(corpus, out, top=1, **train_values) -> dict:
    return tiny_config(corpus, out, "attention", **{"epochs": 2, "encoder_top": top, "encoder_lr_scale": 0.5}
                       | train_values)


@pytest.fixture(scope="module")
def tuned_run(mini_corpus, tmp_path_factory):  # noqa: F811
    """A tiny attention model trained with lite0's last block and head fine-tuned (two epochs)."""
    out = tmp_path_factory.mktemp("tuned") / "run"
    return train(config_from_dict(_top_config(mini_corpus, out)), progress=False)


def _pixels(paths, size=224) -> np.ndarray:
    return np.stack([to_pixels(load_photo(p, size), size) for p in paths])


def test_the_bottom_and_its_top_give_the_whole_encoders_features(flickr8k_root, tmp_path):
    """Through the float16 cache of the map below the top and the top run apart, the features are the whole
    encoder's within bfloat16 rounding; with the top's own weights as the 'tuned' copy, exactly the same."""
    paths = sorted((flickr8k_root / "Images").glob("*.jpg"))[:4]
    whole, bottom = cached_encoder(TINY_ENCODER), cached_encoder(TINY_ENCODER, top=1)
    last = bottom.backbone._blocks[-1]._block_args.input_filters
    assert (bottom.spec.dim, bottom.spec.grid) == (last, 7) and bottom.spec.below == len(bottom.backbone._blocks) - 1
    assert bottom.spec.key != whole.spec.key and f"-below{bottom.spec.below}-" in bottom.spec.key
    reference = whole(_pixels(paths))
    cache, hashes, failed = build_cache(bottom, paths, tmp_path / "cache", progress=False)
    assert not failed and cache.folder.name == bottom.spec.key
    _, cells = FeatureCache.open(tmp_path / "cache", bottom.spec.key).load(hashes)
    assert cells.dtype == torch.float16 and cells.shape == (4, 49, last)
    tuned = with_tuned_top(bottom, bottom.top.state_dict())
    from_cache = tuned.above(cells)
    scale = reference.grid.abs().max()
    assert (from_cache.grid - reference.grid).abs().max() <= 0.02 * scale  # bfloat16 keeps 8 bits
    assert (from_cache.pooled - reference.pooled).abs().max() <= 0.01 * scale
    direct = tuned(_pixels(paths))  # the encoder a model with a top captions with
    assert torch.equal(direct.pooled, reference.pooled) and torch.equal(direct.grid, reference.grid)
    assert torch.equal(direct.tuned[1], reference.grid)


def test_an_encoder_without_blocks_cannot_be_split():
    from captioner.models.encoders import load_encoder

    with pytest.raises(CaptionerError, match="cannot be split"):
        load_encoder("dinov2-vits14", 224, top=1)
    with pytest.raises(CaptionerError, match="its top is 1 to"):
        load_encoder(TINY_ENCODER, 224, top=99)


def test_training_moves_the_tops_weights_but_not_its_batchnorm_statistics(tuned_run, tmp_path):
    original = cached_encoder(TINY_ENCODER, top=1).top.state_dict()
    tuned = load_file(str(tuned_run / TOP_FILE))
    assert tuned.keys() == original.keys()  # the top's tensors, and only those: the bottom stays the shipped one
    statistics = [k for k in original if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    weights = [k for k in original if k not in statistics]
    assert statistics and all(torch.equal(tuned[k], original[k]) for k in statistics)
    moved = [k for k in weights if not torch.equal(tuned[k], original[k])]
    assert len(moved) == len(weights)  # every conv and BatchNorm weight of the block and the head learned
    config = json.loads((tuned_run / "config.json").read_text())
    assert config["format"] == 2 and config["encoder"] == {"name": TINY_ENCODER, "input_size": 224, "top": 1}
    checkpoint = load_file(str(tuned_run.parent / CHECKPOINT))
    assert {k[len("top."):] for k in checkpoint if k.startswith("top.")} == set(original)
    assert "its last block and head fine-tuned at 0.5x" in (tuned_run / "MODEL_CARD.md").read_text()


def test_a_model_with_a_top_captions_through_it_and_keeps_the_encoders_own_features_for_the_rest(
        tuned_run, mini_corpus, reuse_encoders):  # noqa: F811
    """Captioner.load puts the model's top beside the encoder's own: the decoder reads the tuned features, which
    differ from the frozen encoder's; tags and the pooled vector are the frozen encoder's; evaluate's path
    (model_features from the cache) gives the captions `captioner caption` gives."""
    captioner = Captioner.load(tuned_run, device="cpu")
    assert captioner.encoder.tuned is not None and captioner.model.top_blocks == 1
    split = model_features(captioner.model, mini_corpus, "dev", progress=False, device="cpu")
    paths = split.paths[:4]
    features = captioner.encoder(_pixels(paths))
    whole = cached_encoder(TINY_ENCODER)(_pixels(paths))
    assert torch.equal(features.pooled, whole.pooled) and torch.equal(features.grid, whole.grid)
    assert (features.tuned[1] - whole.grid).abs().max() > 0.1 * whole.grid.abs().max()  # it learned
    captions = captioner.caption(paths)
    assert all(c.text and not c.error for c in captions)
    assert np.array_equal(np.stack([c.vector for c in captions]), whole.pooled.numpy())
    assert [c.text for c in captioner.describe(*features)] == [c.text for c in captions]  # the one path
    assert [t.label for t in captions[0].tags] == [t.label for t in captioner.describe(whole.pooled[:1],
                                                                                       whole.grid[:1])[0].tags]
    for cached, fresh in zip((split.pooled, split.grid, *split.decoded), (*features[:2], *features.tuned)):
        assert (cached[:4].float() - fresh).abs().max() <= 0.01 * fresh.abs().max()  # float16 as cached
    beams, _ = decode(captioner.model.decoder, *[t[:4] for t in split.decoded], captioner.model.decode,
                      captioner.tagger, tagged=split.pooled[:4])
    assert all(b[0].tokens for b in beams)


def test_align_can_train_the_photo_tower_on_the_tuned_top_and_captions_are_placed_by_what_it_read(
        tuned_run, mini_corpus, tmp_path, capsys, reuse_encoders):  # noqa: F811
    """`align` on a model with a top: by default the photo tower trains on the top's features, its file says so,
    and the one caption path places each photo in the search space from those features; `--photo-features own`
    reads the encoder's own."""
    from captioner.cli import main

    paths = model_features(load_model(tuned_run), mini_corpus, "dev", progress=False, device="cpu").paths[:3]
    for features_read, option in (("tuned", []), ("own", ["--photo-features", "own"])):  # tuned: the default
        model_dir = tmp_path / features_read
        shutil.copytree(tuned_run, model_dir)
        assert main(["align", "--model", str(model_dir), "--data", str(mini_corpus), "--epochs", "1", *option,
                     "--json", "-q"]) == 0
        assert json.loads(capsys.readouterr().out)["config"]["tuned"] == (features_read == "tuned")
        captioner = Captioner.load(model_dir, search=True, device="cpu")
        assert captioner.embedding.cfg.tuned == (features_read == "tuned")  # saved with the towers
        features = captioner.encoder(_pixels(paths))
        placed = np.stack([c.embedding for c in captioner.describe(*features)])
        tuned = captioner.embedding.images(*features.tuned)
        own = captioner.embedding.images(features.pooled, features.grid)
        assert np.allclose(placed, tuned if features_read == "tuned" else own, atol=1e-5)
        assert not np.allclose(tuned, own, atol=1e-3)


def test_resume_carries_the_top(mini_corpus, tmp_path):  # noqa: F811
    straight = config_from_dict(_top_config(mini_corpus, tmp_path / "straight"))
    train(straight, progress=False)
    stopped = config_from_dict(_top_config(mini_corpus, tmp_path / "stopped"))
    train(stopped, stop_after=1, progress=False)
    train(stopped, resume=True, progress=False)
    assert any(k.startswith("top.") for k in load_file(str(tmp_path / "stopped" / CHECKPOINT)))
    assert_same_checkpoints(tmp_path / "straight", tmp_path / "stopped")


def test_self_critical_training_keeps_the_top_cross_entropy_left(mini_corpus, tmp_path):  # noqa: F811
    values = _top_config(mini_corpus, tmp_path / "run", epochs=1, scst_epochs=1, scst_samples=2, scst_start="last")
    values["train"]["scst_lr"] = 1e-3
    train(config_from_dict(values), progress=False, stop_after=1)
    after_xe = load_file(str(tmp_path / "run" / CHECKPOINT))
    train(config_from_dict(values), resume=True, progress=False)
    after_scst = load_file(str(tmp_path / "run" / CHECKPOINT))
    tops = [k for k in after_xe if k.startswith("top.")]
    assert tops and all(torch.equal(after_xe[k], after_scst[k]) for k in tops)
    assert not all(torch.equal(after_xe[k], after_scst[k]) for k in after_xe if k.startswith("model."))


def test_encoder_top_0_trains_the_frozen_encoder_as_before(mini_corpus, tmp_path):  # noqa: F811
    """No top anywhere: the features cached under the whole encoder's key, no top in the checkpoint or its
    optimiser, a format 1 model folder with the encoder named as before and no top file."""
    model_dir = train(config_from_dict(tiny_config(mini_corpus, tmp_path / "run", "attention", epochs=1)),
                      progress=False)
    checkpoint = load_file(str(tmp_path / "run" / CHECKPOINT))
    assert not any(k.startswith("top.") for k in checkpoint)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / CHECKPOINT), "pt") as f:
        groups = json.loads(f.metadata()["state"])["param_groups"]
    assert len(groups) == 1 and "lr_scale" not in groups[0]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format"] == 1 and config["encoder"] == {"name": TINY_ENCODER, "input_size": 224}
    assert not (model_dir / TOP_FILE).exists() and load_model(model_dir).top is None
    assert sorted(p.name for p in (mini_corpus / "features").iterdir() if "below" not in p.name) == [
        cached_encoder(TINY_ENCODER).spec.key]


def test_features_top_caches_the_map_below_the_top(mini_corpus, tmp_path, capsys):  # noqa: F811
    from captioner.cli import main

    assert main(["features", "--data", str(mini_corpus), "--encoder", TINY_ENCODER, "--top", "1", "--cache",
                 str(tmp_path), "--device", "cpu", "-q"]) == 0
    bottom = cached_encoder(TINY_ENCODER, top=1)
    assert "efficientnet-lite0 maps below its top (K = 1)" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [bottom.spec.key]
    cache = FeatureCache.open(tmp_path, bottom.spec.key)
    _, cells = cache.load(list(cache.rows))
    assert cells.shape == (len(cache.rows), 49, bottom.spec.dim) and len(cache.rows) >= 49  # 50 photos, maybe a twin


def test_a_video_is_captioned_from_the_tuned_features_of_its_scenes(tuned_run, tmp_path, reuse_encoders):
    import av

    from captioner.video.scenes import scenes

    film = tmp_path / "two.mp4"
    with av.open(str(film), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for photo in ("tabby_cat", "cup_of_coffee"):
            picture = load_photo(Path(__file__).parents[1] / "examples" / f"{photo}.jpg").resize((160, 96))
            for _ in range(15):  # 3 s each, a cut between
                out.mux(stream.encode(av.VideoFrame.from_image(picture)))
        out.mux(stream.encode())
    captioner = Captioner.load(tuned_run, device="cpu")
    given = []
    describe = captioner.describe
    captioner.describe = lambda pooled, grid, tuned=None, beam=None: given.append(tuned) or describe(
        pooled, grid, tuned, beam)
    found = list(scenes(captioner, film))
    assert len(found) == 2 and all(s.caption.text for s in found)
    assert len(given) == 2 and all(t is not None and t[0].shape[0] == t[1].shape[0] == 1 for t in given)
