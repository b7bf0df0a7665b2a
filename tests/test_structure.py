"""The package's shape: subpackages that follow the pipeline, no import circle, no import that runs back up,
one module that runs the caption search, and a command line that starts without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "captioner"

LAYERS = {  # a module may import from its own package and from packages of a lower layer only
    "errors": 0, "version": 0,
    "files": 1, "settings": 1, "extras": 1,
    "data": 2,
    "models": 3,
    "features": 4,
    "captioning": 5,
    "evaluation": 6, "visualize": 6, "video": 6,
    "training": 7, "gallery": 7,
    "distributed": 8, "web": 8,
    "cli": 9, "__main__": 10, "__init__": 10,
}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The captioner modules `name` imports, at its top or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "captioner":
                continue
            modules = _modules()
            for alias in node.names:  # `from . import confidence` names a module
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "captioner"}
    return {m for m in found if m != name}


def _layer(module: str) -> tuple[str, int]:
    top = module.split(".")[1] if "." in module else "__init__"
    return top, LAYERS[top]


def test_every_module_has_a_layer_and_no_import_runs_back_up():
    upward = []
    for name, path in _modules().items():
        top, layer = _layer(name)
        for target in _imports(name, path):
            other, other_layer = _layer(target)
            if other != top and other_layer >= layer:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that do not go down: " + ", ".join(sorted(upward))


def test_no_import_circle():
    graph = {name: _imports(name, path) for name, path in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt == "captioner" or nxt not in graph:
                continue
            assert state.get(nxt) != 1, f"import circle: {' -> '.join(trail + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_one_module_runs_the_caption_search():
    """Captions are made from features in one place (models/decode.py); the others call it."""
    callers = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if called in ("beam_search", "greedy"):
                    callers.add(name)
    assert callers == {"captioner.models.decode"}


def test_the_command_line_parser_and_the_package_import_no_torch():
    code = ("import sys, captioner, captioner.cli; captioner.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'fastapi', 'faiss', 'ray', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_public_api_is_where_it_was():
    from captioner import Caption, Captioner
    from captioner.gallery import Gallery

    assert Captioner.__module__ == Caption.__module__ == "captioner.captioning" and Gallery.__name__ == "Gallery"


def test_the_code_passes_the_projects_lint():
    """pyflakes, import order and line length (pyproject.toml's [tool.ruff]) over the package, tests and
    benchmarks."""
    root = PACKAGE.parents[1]
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "--no-cache", "--quiet"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
