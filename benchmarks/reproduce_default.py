"""Reproduce the shipped default model from the raw Flickr8k corpus and time every stage.

    python benchmarks/reproduce_default.py --corpus ../shared/data/flickr8k --work /tmp/captioner-bench

Runs `captioner prepare`, `features`, `train configs/default.toml` (cross-entropy,
then self-critical epochs), chooses the beam width, length penalty and n-gram
blocking on the dev split (benchmarks/tune_decoding.py) and
runs `evaluate --split test` once, as a user would, each as its own process, and
prints the commands, their wall-clock times and the test-split metrics. Then it
trains the retrieval head for gallery search (`align`: train split, tuned on
dev), timed on its own: the total is raw corpus to evaluated captioner. With --ship
the trained model is copied into src/captioner/assets/default with its card.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: list[dict]) -> float:
    shown = " ".join(cmd)
    print(f"$ {shown}", flush=True)
    started = time.time()
    subprocess.run(cmd, check=True)
    seconds = time.time() - started
    log.append({"command": shown, "seconds": round(seconds, 1)})
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    parser.add_argument("--work", default="/tmp/captioner-bench", help="scratch folder (deleted first)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--ship", action="store_true", help="copy the model into src/captioner/assets/default")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, out = work / "flickr8k", work / "run"
    config = tomllib.loads(Path(args.config).read_text())
    config["data"]["prepared"] = str(data)
    config["train"]["out"] = str(out)
    cfg_path = work / "config.toml"
    cfg_path.write_text("\n".join(f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
                                  for section, values in config.items()) + "\n")
    exe = [sys.executable, "-m", "captioner.cli"]
    log: list[dict] = []
    started = time.time()
    run([*exe, "prepare", "flickr8k", args.corpus, "--out", str(data)], log)
    run([*exe, "features", "--data", str(data), "--encoder", config["data"]["encoder"]], log)
    run([*exe, "train", str(cfg_path)], log)
    run([sys.executable, str(ROOT / "benchmarks" / "tune_decoding.py"), "--model", str(out / "model"),
         "--data", str(data), "--beams", "3,5", "--length-penalties", "0,0.5", "--block-ngrams", "0,3", "--write"], log)
    run([*exe, "evaluate", "--model", str(out / "model"), "--data", str(data), "--split", "test", "--json"], log)
    total = time.time() - started  # raw corpus to evaluated captioner
    run([*exe, "align", "--model", str(out / "model"), "--data", str(data)], log)  # for gallery search
    report = json.loads((out / "model" / "eval-test" / "report.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(epochs, key=lambda r: r["dev_cider"])
    summary = {"machine": machine(), "total_minutes": round(total / 60, 1), "stages": log,
               "epochs_run": len(epochs), "best_epoch": best["epoch"], "dev_cider_greedy": round(best["dev_cider"], 1),
               "test": {k: round(v, 1) for k, v in report["scores"].items() if k != "photos"},
               "diversity": report["diversity"], "beam": report["meta"]["beam"],
               "length_penalty": report["meta"]["length_penalty"], "block_ngram": report["meta"]["block_ngram"],
               "xe_epochs": sum(r.get("phase", "xe") == "xe" for r in epochs)}
    print(json.dumps(summary, indent=2))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.ship:
        ship(out / "model", summary, args.config)


def ship(model: Path, summary: dict, config: str) -> None:
    """Copy the model files into the package with a card that says how it was made and how it scores."""
    from safetensors.torch import load_file, save_file

    dest = ROOT / "src" / "captioner" / "assets" / "default"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.json", "retrieval.safetensors"):
        shutil.copyfile(model / name, dest / name)
    # float16 halves the package; the decoder loads it back into float32.
    weights = {k: v.half() for k, v in load_file(str(model / "model.safetensors")).items()}
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "1"})
    card = (ROOT / "benchmarks" / "MODEL_CARD.template.md").read_text()
    test = summary["test"]
    card = card.format(machine=summary["machine"], minutes=summary["total_minutes"], epochs=summary["epochs_run"],
                       best_epoch=summary["best_epoch"], dev_cider=summary["dev_cider_greedy"], beam=summary["beam"],
                       length_penalty=summary["length_penalty"], block_ngram=summary["block_ngram"],
                       xe_epochs=summary["xe_epochs"],
                       config=Path(config).read_text().strip(),
                       metrics=" | ".join(f"{test[k]:.1f}" for k in test), metric_names=" | ".join(test),
                       rule="|".join("---" for _ in test),
                       distinct=f"{summary['diversity']['distinct_captions'] * 100:.1f}",
                       vocabulary=summary["diversity"]["vocabulary"],
                       repeated=f"{summary['diversity']['repeated_word'] * 100:.1f}",
                       stages="\n".join(f"| `{s['command']}` | {s['seconds']:.0f} |" for s in summary["stages"]))
    (dest / "MODEL_CARD.md").write_text(card)
    print(f"shipped to {dest}")


if __name__ == "__main__":
    main()
