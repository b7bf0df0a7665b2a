"""`captioner caption` and the Python API on a tiny random model: output format, exit status, odd and broken photos.

The model is untrained, so captions are random words: these tests check format
and behaviour, never wording. Most run `cli.main` in-process (the encoder is
loaded once per session); one subprocess proves the real exit status and that
stderr holds no traceback.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captioner.captioning import Caption, Captioner
from captioner.cli import main
from captioner.visualize import LABEL, TILE
from conftest import TEST_THREADS, TINY_MAX_LEN, TINY_WORDS
from photos import BROKEN_MESSAGES, ODD_SIZES, make_broken_photos, make_odd_photos

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    return make_odd_photos(tmp_path_factory.mktemp("odd photos"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    return make_broken_photos(tmp_path_factory.mktemp("broken"))


@pytest.fixture
def caption(tiny_model_dir, reuse_encoders, capsys):
    """Run `captioner caption --model TINY ARGS...` in-process: (exit status, stdout lines, stderr)."""
    def run(*args) -> tuple[int, list[str], str]:
        code = main(["caption", "--model", str(tiny_model_dir), *map(str, args)])
        out, err = capsys.readouterr()
        return code, out.splitlines(), err
    return run


def json_lines(lines: list[str]) -> list[dict]:
    records = [json.loads(line) for line in lines]
    for r in records:
        assert set(r) in ({"path", "caption", "score"}, {"path", "error"}), r
    return records


def assert_captioned(record: dict) -> None:
    assert set(record) == {"path", "caption", "score"}, record
    words = record["caption"].split()
    assert len(words) == TINY_MAX_LEN and set(words) <= set(TINY_WORDS)  # the tiny model's words (never ends early)
    assert isinstance(record["score"], float) and -math.inf < record["score"] < 0


def assert_no_traceback(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err


def test_every_odd_photo_in_a_folder_is_captioned_one_json_line_each(caption, odd):
    code, lines, err = caption("--json", next(iter(odd.values())).parent)  # the folder
    assert code == 0, err
    records = json_lines(lines)
    # The folder expands to all its photos, sorted by name; every one captioned.
    assert [r["path"] for r in records] == [str(p) for p in sorted(odd.values(), key=lambda p: p.name)]
    assert len(records) == len(ODD_SIZES)
    for r in records:
        assert_captioned(r)
    assert any("été photo ñ.png" in line for line in lines)  # non-ASCII printed as is, not escaped
    assert_no_traceback(err)
    assert "error" not in err and "warning" not in err


def test_each_broken_photo_is_one_error_line_and_the_others_are_still_captioned(caption, odd, broken):
    order = ["rgb_jpeg", "empty", "text_named_jpg", "bomb_png", "folder_named_jpg", "missing", "damaged_png",
             "tiny_1x1", "truncated_jpeg", "webp"]
    paths = [odd[k] if k in odd else broken[k] for k in order]
    # Batches of 2: the truncated photo is decoded while the batch before it is still being captioned.
    code, lines, err = caption("--json", "--batch-size", 2, *paths)
    assert code == 1
    records = json_lines(lines)
    assert [r["path"] for r in records] == [str(p) for p in paths]  # one line per input, in input order
    for name, record in zip(order, records):
        phrase = BROKEN_MESSAGES.get(name)
        if phrase:
            assert set(record) == {"path", "error"}
            assert phrase in record["error"] and record["error"].startswith(str(broken[name]))
            assert "\n" not in record["error"] and "Error" not in record["error"]  # a sentence, no exception name
        else:
            assert_captioned(record)  # the good photos and the truncated JPEG (what is there of it)
    assert_no_traceback(err)
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 1 and str(broken["truncated_jpeg"]) in warned[0] and "truncated" in warned[0]


def test_plain_output_is_one_line_per_photo_errors_on_stderr(caption, odd, broken):
    code, lines, err = caption(odd["rgb_jpeg"])  # one photo: just its caption
    assert code == 0 and len(lines) == 1
    assert len(lines[0].split()) == TINY_MAX_LEN and set(lines[0].split()) <= set(TINY_WORDS)
    code, lines, err = caption(odd["rgb_jpeg"], broken["missing"], odd["unicode_name"])
    assert code == 1
    assert [line.split(": ", 1)[0] for line in lines] == [str(odd["rgb_jpeg"]), str(odd["unicode_name"])]
    assert all(set(line.split(": ", 1)[1].split()) <= set(TINY_WORDS) for line in lines)
    errors = err.splitlines()
    assert len(errors) == 1 and str(broken["missing"]) in errors[0] and "does not exist" in errors[0]


def test_a_folder_with_no_photos_is_an_error_line_not_silence(caption, odd, tmp_path):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    code, lines, err = caption("--json", empty, odd["rgb_jpeg"])
    assert code == 1
    records = json_lines(lines)
    assert set(records[0]) == {"path", "error"} and records[0]["path"] == str(empty)
    assert "is a folder" in records[0]["error"]
    assert_captioned(records[1])


@pytest.mark.parametrize("args", [
    [],  # no photos
    ["photo.jpg", "--beam", "abc"],
    ["photo.jpg", "--beam", "0"],
    ["photo.jpg", "--beam", "-2"],
    ["photo.jpg", "--batch-size", "0"],
    ["photo.jpg", "--no-such-option"],
], ids=["no-photos", "beam-abc", "beam-0", "beam-negative", "batch-size-0", "unknown-option"])
def test_usage_errors_exit_2_with_the_usage(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(["caption", *args])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: captioner" in err
    assert_no_traceback(err)


def test_a_model_folder_that_is_not_a_model_is_one_clear_error(odd, tmp_path, capsys):
    not_a_model = tmp_path / "holiday"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{}")
    code = main(["caption", "--model", str(not_a_model), "--json", str(odd["rgb_jpeg"])])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(not_a_model) in err and "model" in err
    assert_no_traceback(err)


def test_beam_1_and_beam_3_both_caption(caption, odd):
    photos = [odd["rgb_jpeg"], odd["exif_rotated_jpeg"]]
    results = {}
    for beam in (1, 3):
        code, lines, err = caption("--json", "--beam", beam, *photos)
        assert code == 0, err
        results[beam] = json_lines(lines)
        assert [r["path"] for r in results[beam]] == [str(p) for p in photos]
        for r in results[beam]:
            assert_captioned(r)


def test_attention_writes_one_png_per_photo_showing_each_word(caption, odd, tmp_path):
    names = ["rgb_jpeg", "tiny_1x1", "panorama_10000x50", "animated_gif", "animated_png", "animated_webp"]
    out = tmp_path / "attention maps"
    code, lines, err = caption("--json", "--attention", out, *(odd[n] for n in names))
    assert code == 0, err
    records = json_lines(lines)
    pngs = sorted(png.name for png in out.iterdir())
    assert len(pngs) == len(names)  # one per photo, even for photos sharing a name ("animated.*")
    assert len([png for png in pngs if png.startswith("animated")]) == 3
    for name, record in zip(names[:3], records):
        with Image.open(out / f"{odd[name].stem}.attention.png") as img:
            img.load()
            width, height = img.size
        w, h = ODD_SIZES[name]
        tile_height = max(1, round(TILE * h / w))
        tiles = len(record["caption"].split()) + 1  # each word and the end of the sentence
        assert width == 5 * TILE  # bigger than the photo tile: a sheet of tiles with their words
        assert height == math.ceil(tiles / 5) * (tile_height + LABEL)
    for png in pngs:
        with Image.open(out / png) as img:
            img.verify()


def test_python_api_gives_caption_objects_with_alternatives_and_attention(tiny_model_dir, reuse_encoders, odd,
                                                                          broken):
    captioner = Captioner.load(tiny_model_dir)
    photos = [odd["rgb_jpeg"], broken["text_named_jpg"], odd["gray_png"]]
    for beam in (3, 1):
        results = captioner.caption(photos, beam=beam)
        assert [c.path for c in results] == photos and all(isinstance(c, Caption) for c in results)
        good, bad, other = results
        assert bad.error and "not a photo" in bad.error and bad.text == ""
        for c in (good, other):
            assert c.error == "" and c.text == " ".join(c.words) and set(c.words) <= set(TINY_WORDS)
            assert len(c.words) == TINY_MAX_LEN and c.score < 0
            assert len(c.alternatives) == beam - 1
            assert all(text and score <= c.score + 1e-6 for text, score in c.alternatives)  # best first
            assert c.attention.shape == (len(c.words) + 1, 7, 7)
            np.testing.assert_allclose(c.attention.sum((1, 2)), 1.0, rtol=2e-2)  # a distribution per word (bf16)
            assert c.to_json() == {"path": str(c.path), "caption": c.text, "score": round(c.score, 4)}
        assert bad.to_json() == {"path": str(bad.path), "error": bad.error}


def test_the_real_command_exits_1_with_a_json_line_per_input_and_no_traceback(tiny_model_dir, odd, broken):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(TEST_THREADS)}
    done = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "caption", "--json", "--model", str(tiny_model_dir),
         str(odd["rgb_jpeg"]), str(broken["empty"])],
        capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    records = json_lines(done.stdout.splitlines())
    assert [r["path"] for r in records] == [str(odd["rgb_jpeg"]), str(broken["empty"])]
    assert_captioned(records[0])
    assert "is empty" in records[1]["error"]
    assert_no_traceback(done.stderr)


def test_tags_are_shown_after_each_caption_and_in_json(caption, odd):
    code, lines, err = caption("--tags", odd["rgb_jpeg"], odd["unicode_name"])
    assert code == 0, err
    assert [line.startswith("  tags: ") for line in lines] == [False, True, False, True]
    shown = lines[1].removeprefix("  tags: ")
    assert shown == "none" or all(part.rsplit(" ", 1)[1].endswith("%") for part in shown.split(", "))
    code, lines, err = caption("--tags", "--json", odd["rgb_jpeg"])
    record = json.loads(lines[0])
    assert set(record) == {"path", "caption", "score", "tags"}
    assert all(set(t) == {"label", "p", "word"} and 0.05 <= t["p"] <= 1 for t in record["tags"])
    assert [t["p"] for t in record["tags"]] == sorted((t["p"] for t in record["tags"]), reverse=True)


@pytest.fixture
def calibrated(tiny_model_dir, tmp_path):
    """The tiny model with a confidence that is always `sure` (no weights, only a bias), said plainly from 0.7."""
    import shutil

    import torch

    from captioner.models import confidence

    def make(sure: float) -> Path:
        folder = tmp_path / f"calibrated-{sure}"
        shutil.copytree(tiny_model_dir, folder)
        n = len(confidence.FEATURES)
        fixed = confidence.Confidence(torch.zeros(n), torch.logit(torch.tensor(sure)), torch.zeros(n), torch.ones(n),
                                      plain=0.7)
        confidence.save(folder, torch.eye(8, 1280), fixed)
        return folder
    return make


def test_a_calibrated_models_confidence_is_in_json_and_its_doubt_in_words(calibrated, reuse_encoders, odd, capsys):
    for sure, hedge in ((0.9, ""), (0.6, "probably "), (0.2, "I am not sure; it may be ")):
        model = str(calibrated(sure))
        assert main(["caption", "--model", model, str(odd["rgb_jpeg"])]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(hedge) and not line[len(hedge):].startswith(("probably", "I am not sure"))
        assert main(["caption", "--model", model, "--json", str(odd["rgb_jpeg"])]) == 0
        record = json.loads(capsys.readouterr().out)
        assert set(record) == {"path", "caption", "score", "confidence"} and record["confidence"] == sure
        assert len(record["caption"].split()) == TINY_MAX_LEN  # the model's sentence, without the doubt


def test_attention_with_a_model_that_does_not_attend_says_so(tmp_path, reuse_encoders, odd, gru_kind, capsys):
    import torch

    from captioner.data.text import SPECIALS, Vocab
    from captioner.models.decode import DecodeConfig
    from captioner.models.decoders import Decoder, DecoderConfig
    from captioner.models.folder import Model, save_model

    vocab = Vocab([*SPECIALS, *TINY_WORDS])
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind="merge", embed_dim=16, hidden_dim=16, dropout=0.0), len(vocab), 1280)
    save_model(tmp_path / "merge", Model(decoder.eval(), vocab, "efficientnet-lite0", 224, DecodeConfig(beam=2)),
               card="# tiny merge model\n")
    maps = tmp_path / "maps"
    assert main(["caption", "--model", str(tmp_path / "merge"), "--attention", str(maps), str(odd["rgb_jpeg"])]) == 1
    err = capsys.readouterr().err
    assert err.startswith("captioner: error: --attention needs a model that attends to parts of the photo, and "
                          "this one's decoder is merge: use a model of kind attention or gru or transformer")
    assert not maps.exists()


def test_a_registered_kind_is_listed_in_help_and_its_model_captions_with_attention(tmp_path, reuse_encoders, odd,
                                                                                   gru_kind, capsys):
    """A decoder kind added by a module and a registration alone (conftest.GRUKind): the commands' help lists
    it, and a model folder of that kind saves, loads and captions with attention maps."""
    import torch

    from captioner.cli import build_parser
    from captioner.data.text import SPECIALS, Vocab
    from captioner.models.decode import DecodeConfig
    from captioner.models.decoders import Decoder, DecoderConfig
    from captioner.models.folder import Model, load_model, save_model

    for command, listed in (("train", "gru: a GRU cell with a glance at the grid"),
                            ("caption", "attends: attention or gru or transformer")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        assert listed in " ".join(capsys.readouterr().out.split())  # the help's lines joined
    vocab = Vocab([*SPECIALS, *TINY_WORDS])
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(kind=gru_kind, embed_dim=16, hidden_dim=16, dropout=0.0), len(vocab), 1280)
    save_model(tmp_path / "gru", Model(decoder.eval(), vocab, "efficientnet-lite0", 224, DecodeConfig(beam=2)))
    loaded = load_model(tmp_path / "gru").decoder
    assert type(loaded.net).__name__ == "GRUKind"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in decoder.state_dict().items())
    maps = tmp_path / "maps"
    assert main(["caption", "--model", str(tmp_path / "gru"), "--json", "--attention", str(maps),
                 str(odd["rgb_jpeg"])]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["caption"] and set(record["caption"].split()) <= set(TINY_WORDS)
    with Image.open(maps / f"{odd['rgb_jpeg'].stem}.attention.png") as img:
        img.verify()
