"""The command line's edges: every error a user can cause is one sentence and an exit status, never a traceback.

Exit status 2 is a usage error (argparse prints the usage and the sentence), 1
failed work, 130 Ctrl+C; `--debug` or CAPTIONER_DEBUG=1 shows the traceback
instead. Most tests run `cli.main` in-process; a subprocess only where the
process itself is the point (python -m, --version, a closed stdout).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from captioner import cli
from captioner.cli import build_parser, main
from conftest import TEST_THREADS
from fakes import FakeCaptioner
from test_corpus import GOOD, make_flickr8k, make_images, write_lines

SRC = Path(__file__).resolve().parents[1] / "src"


def assert_one_sentence(err: str) -> None:
    """stderr holds exactly one line, the error's sentence, and no trace of an exception."""
    assert err.count("\n") == 1 and err.startswith("captioner: "), err
    assert "Traceback" not in err and 'File "' not in err and "Error:" not in err, err


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`captioner ARGV...` in-process: (exit status, stdout, stderr), a usage error's SystemExit included."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    """A local TCP port nothing listens on (it was free a moment ago): connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": str(TEST_THREADS)}


# --- numbers and usage: exit status 2 at parse time -------------------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "0"], "--port"),
    (["serve", "--port", "http"], "--port"),
    (["evaluate", "--beam", "0"], "--beam"),
    (["train", "c.toml", "--stop-after", "0"], "--stop-after"),
    (["prepare", "csv", "x.csv", "--min-count", "0"], "--min-count"),
    (["prepare", "csv", "x.csv", "--max-len", "-3"], "--max-len"),
    (["features", "--input-size", "0"], "--input-size"),
    (["similar", "photo.jpg", "-k", "0"], "-k"),
], ids=["port-too-big", "port-0", "port-word", "evaluate-beam-0", "stop-after-0", "min-count-0", "max-len-negative",
        "input-size-0", "k-0"])
def test_a_number_out_of_range_is_a_usage_error_naming_the_flag_and_the_range(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: captioner" in err and "Traceback" not in err
    sentence = err.strip().splitlines()[-1]
    assert f"argument {flag}" in sentence and ("at least 1" in sentence or "1 to 65535" in sentence
                                               or "whole number" in sentence), sentence


def test_a_port_in_range_is_accepted():
    assert build_parser().parse_args(["serve", "--port", "65535"]).port == 65535


@pytest.mark.parametrize("argv", [["search"], ["search", "a dog", "--queries", "q.txt"]], ids=["neither", "both"])
def test_search_needs_exactly_one_of_text_or_queries_a_usage_error(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert "usage: captioner search" in err and "TEXT" in err.splitlines()[-1] and "--queries" in err.splitlines()[-1]


# --- paths: exit status 1, one sentence ------------------------------------------------------------------

def test_search_with_a_missing_queries_file_names_it(tiny_model_dir, tmp_path, capsys):
    from captioner.gallery import Gallery

    db = tmp_path / "g.db"
    Gallery.create(db, captioner=FakeCaptioner(tiny_model_dir)).close()  # an empty gallery of the tiny model
    missing = tmp_path / "missing.txt"
    code, out, err = run(["search", "--queries", str(missing), "--db", str(db), "--model", str(tiny_model_dir)],
                         capsys)
    assert code == 1 and out == ""
    assert_one_sentence(err)
    assert str(missing) in err and "--queries" in err


def test_attention_into_a_folder_that_cannot_be_made_names_it(tiny_model_dir, reuse_encoders, photo, tmp_path,
                                                             capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    maps = blocker / "maps"
    code, out, err = run(["caption", "--model", str(tiny_model_dir), "--attention", str(maps), str(photo)], capsys)
    assert code == 1 and out == ""
    assert_one_sentence(err)
    assert str(maps) in err and "--attention" in err
    assert blocker.read_text() == "not a folder"


# --- serve: --db like the other commands, the default gallery, the port -----------------------------------

@pytest.fixture
def served(monkeypatch):
    """Replace the web server by a recorder of what `captioner serve` would serve: a list of (model, gallery)."""
    import captioner.web.app

    calls = []
    monkeypatch.setattr(captioner.web.app, "serve", lambda model, gallery, *rest: calls.append((model, gallery)))
    return calls


@pytest.mark.parametrize("option", ["--db", "--gallery"])
def test_serve_takes_db_like_index_and_search_and_still_gallery(option, served, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTIONER_GALLERY", str(tmp_path / "default.db"))
    assert main(["serve", "--port", str(closed_port()), option, str(tmp_path / "g.db")]) == 0
    assert [(model, Path(db)) for model, db in served] == [(None, tmp_path / "g.db")]


@pytest.mark.parametrize("exists", [True, False])
def test_serve_without_db_serves_the_default_gallery_when_there_is_one(exists, served, tmp_path, monkeypatch,
                                                                       capsys):
    default = tmp_path / "default.db"
    if exists:
        default.write_bytes(b"")
    monkeypatch.setenv("CAPTIONER_GALLERY", str(default))
    assert main(["serve", "--port", str(closed_port())]) == 0
    assert served == [(None, default if exists else None)]
    assert (str(default) in capsys.readouterr().err) == exists  # says which gallery it serves


def test_serve_on_a_port_in_use_is_one_sentence_before_loading_anything(served, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run(["serve", "--port", str(port)], capsys)
    assert code == 1 and served == []
    assert_one_sentence(err)
    assert str(port) in err and "in use" in err and "--port" in err


# --- Ray: an unreachable cluster is one sentence, at once ------------------------------------------------

@pytest.mark.parametrize("where", ["RAY_ADDRESS", "--ray-address"])
def test_an_unreachable_ray_cluster_is_one_sentence_within_seconds(where, tiny_model_dir, photo, monkeypatch,
                                                                   capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")  # imported before the clock starts: importing is not connecting
    address = f"127.0.0.1:{closed_port()}"
    argv = ["caption", "--model", str(tiny_model_dir), str(photo), "--ray"]
    if where == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        argv += ["--ray-address", address]
    ray.shutdown()
    started = time.monotonic()
    code, out, err = run(argv, capsys)
    assert time.monotonic() - started < 15
    assert code == 1 and out == ""
    assert_one_sentence(err)
    assert address.rsplit(":", 1)[1] in err and "Ray cluster" in err and "--ray-address" in err
    assert not ray.is_initialized()


def test_a_ray_address_that_is_not_one_is_one_sentence(tiny_model_dir, photo, monkeypatch, capsys):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, out, err = run(["caption", "--model", str(tiny_model_dir), str(photo), "--ray-address", "head-node"],
                         capsys)
    assert code == 1
    assert_one_sentence(err)
    assert "head-node" in err and "HOST:PORT" in err


# --- prepare: the default --out depends on the corpus, and a different corpus is not overwritten -----------

@pytest.fixture
def corpora(tmp_path, monkeypatch) -> dict[str, Path]:
    """A tiny Flickr8k folder and a tiny Kaggle captions.txt; the working folder is empty (data/ goes there)."""
    flickr = make_flickr8k(tmp_path / "Flickr8k", GOOD["flickr8k"])
    make_images(tmp_path / "kaggle" / "Images")
    kaggle = write_lines(tmp_path / "kaggle" / "captions.txt", GOOD["csv"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return {"flickr8k": flickr, "csv": kaggle, "work": work}


def prepared_source(folder: Path) -> str:
    return json.loads((folder / "captions.json").read_text(encoding="utf-8"))["source"]


def test_prepare_csv_does_not_overwrite_the_prepared_flickr8k(corpora, capsys):
    assert main(["prepare", "flickr8k", str(corpora["flickr8k"])]) == 0
    flickr = corpora["work"] / "data" / "flickr8k"
    before = (flickr / "captions.json").read_bytes()
    assert main(["prepare", "csv", str(corpora["csv"])]) == 0
    assert (flickr / "captions.json").read_bytes() == before
    assert prepared_source(corpora["work"] / "data" / "csv") == "csv"
    assert "data/csv/captions.json" in capsys.readouterr().out


def test_prepare_refuses_to_replace_another_corpus_unless_forced(corpora, capsys):
    out = corpora["work"] / "data" / "flickr8k"
    assert main(["prepare", "flickr8k", str(corpora["flickr8k"]), "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "captions.json").read_bytes()
    code, stdout, err = run(["prepare", "csv", str(corpora["csv"]), "--out", str(out)], capsys)
    assert code == 1 and stdout == ""
    assert_one_sentence(err)
    assert str(out) in err and "flickr8k" in err and "--force" in err
    assert (out / "captions.json").read_bytes() == before
    assert main(["prepare", "csv", str(corpora["csv"]), "--out", str(out), "--force"]) == 0
    assert prepared_source(out) == "csv"
    # The same corpus again (say with other settings) needs no --force.
    assert main(["prepare", "csv", str(corpora["csv"]), "--out", str(out), "--min-count", "1"]) == 0


# --- the one place that maps exceptions: unexpected ones, --debug, Ctrl+C ---------------------------------

def failing_prepare(error: BaseException):
    def run_prepare(args):
        raise error
    return run_prepare


def test_an_unexpected_exception_is_one_sentence_pointing_to_debug(monkeypatch, capsys):
    monkeypatch.delenv("CAPTIONER_DEBUG", raising=False)
    monkeypatch.setattr(cli.corpus, "cmd_prepare", failing_prepare(RuntimeError("the disk said no\nand more")))
    code, out, err = run(["prepare", "csv", "x.csv"], capsys)
    assert code == 1
    assert_one_sentence(err)
    assert "prepare" in err and "RuntimeError" in err and "the disk said no" in err
    assert err.rstrip().endswith("run with --debug for the traceback")


def test_a_file_the_command_cannot_use_is_named(monkeypatch, capsys):
    monkeypatch.delenv("CAPTIONER_DEBUG", raising=False)
    denied = PermissionError(13, "Permission denied", "/srv/corpora/out")
    monkeypatch.setattr(cli.corpus, "cmd_prepare", failing_prepare(denied))
    code, out, err = run(["prepare", "csv", "x.csv"], capsys)
    assert code == 1
    assert_one_sentence(err)
    assert "/srv/corpora/out (permission denied)" in err and "check the path" in err


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "CAPTIONER_DEBUG=1"])
def test_debug_shows_the_traceback_instead(how, monkeypatch):
    monkeypatch.delenv("CAPTIONER_DEBUG", raising=False)
    monkeypatch.setattr(cli.corpus, "cmd_prepare", failing_prepare(RuntimeError("the disk said no")))
    argv = ["prepare", "csv", "x.csv"]
    if how == "CAPTIONER_DEBUG=1":
        monkeypatch.setenv("CAPTIONER_DEBUG", "1")
    if how.startswith("--debug"):
        argv = ["--debug", *argv] if how == "--debug first" else [*argv, "--debug"]
    with pytest.raises(RuntimeError, match="the disk said no"):
        main(argv)


def test_a_broken_pipe_that_is_not_stdout_is_still_said(monkeypatch, capsys):
    monkeypatch.delenv("CAPTIONER_DEBUG", raising=False)
    monkeypatch.setattr(cli.corpus, "cmd_prepare", failing_prepare(BrokenPipeError(32, "Broken pipe")))
    code, out, err = run(["prepare", "csv", "x.csv"], capsys)  # stdout is fine: some other pipe broke
    assert code == 1
    assert_one_sentence(err)
    assert "BrokenPipeError" in err


def test_ctrl_c_is_130(monkeypatch, capsys):
    monkeypatch.setattr(cli.corpus, "cmd_prepare", failing_prepare(KeyboardInterrupt()))
    code, out, err = run(["prepare", "csv", "x.csv"], capsys)
    assert code == 130 and err == "captioner: interrupted\n"


# --- the process: python -m captioner, --version, a closed stdout -----------------------------------------

def test_python_m_captioner_runs_the_command_and_says_its_version():
    from captioner import __version__

    done = subprocess.run([sys.executable, "-m", "captioner", "--version"], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"captioner {__version__}\n"


def test_a_closed_stdout_ends_quietly(tiny_model_dir, photo):
    """`captioner caption ... | head -1`: the reader went away; no BrokenPipeError, no traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", "--model", str(tiny_model_dir),
                               str(photo), str(photo)], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(), timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""


# --- devices -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["caption", "PHOTO"], ["index", "PHOTO", "--db", "DB"],
                                     ["search", "a dog", "--db", "DB"], ["serve", "--db", "DB", "--port", "PORT"]])
def test_every_command_that_runs_a_model_takes_device_and_says_when_it_is_not_here(command, tiny_model_dir,
                                                                                  tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "red").save(photo)
    with socket.socket() as s:  # a free port, for serve
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    given = {"PHOTO": str(photo), "DB": str(tmp_path / "g.db"), "PORT": str(port)}
    argv = [given.get(a, a) for a in command] + ["--model", str(tiny_model_dir), "--device", "cuda"]
    if command[0] == "search":  # a gallery to search
        from captioner.gallery import Gallery

        Gallery.create(given["DB"], captioner=FakeCaptioner(tiny_model_dir)).close()
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(argv, capsys)
    assert code == 1 and out == ""
    assert_one_sentence(err)
    assert "device cuda is not available here" in err and "cpu" in err
    assert sorted(tmp_path.rglob("*")) == before  # refused before anything was written


def test_ray_with_a_gpu_device_is_refused_in_one_sentence(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("ray")
    code, out, err = run(["caption", str(tmp_path), "--ray", "--device", "cuda"], capsys)
    assert code == 1
    assert_one_sentence(err)
    assert "--ray runs the model on the CPU" in err
