"""Train and score every run of the experiment table: select on dev, report on test.

    python benchmarks/experiments.py --data data/flickr8k --work runs/experiments
    python benchmarks/experiments.py --data ... --work ... --only "transformer" --only "soft attention"

Each `[[run]]` of benchmarks/experiments.toml names a config from configs/ and
the settings it changes (`set = {"model.kind" = "merge"}`). For each run this
trains the model into WORK/<run name> (resuming a stopped run; a run already in
WORK/results.jsonl is skipped), caches the features its encoder needs, scores the
selected model on the dev split and then on the test split with the COCO caption
toolkit, and appends one JSON line to WORK/results.jsonl. Then it prints the
markdown table of all results so far, as BENCHMARKS.md quotes it.
"""
from __future__ import annotations

import argparse
import json
import re
import time
import tomllib
from pathlib import Path

from captioner.evaluation.evaluate import evaluate
from captioner.training.config import config_from_dict
from captioner.training.train import CHECKPOINT, train

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def run_config(run: dict, data: str, out: Path) -> dict:
    """The run's config as a dict: its file, its `set` overrides, then this corpus and output folder."""
    values = tomllib.loads((ROOT / run["config"]).read_text())
    for dotted, value in run.get("set", {}).items():
        section, key = dotted.split(".")
        values.setdefault(section, {})[key] = value
    values["data"] |= {"prepared": data, "cache": str(Path(data) / "features")}
    values["train"]["out"] = str(out)
    return values


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(results: list[dict]) -> str:
    head = ["run", "train min", "dev CIDEr", *METRICS, "distinct", "words", "repeats"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        d = r["diversity"]
        cells = [r["name"], f"{r['train_minutes']:.1f}", f"{r['dev']['CIDEr']:.1f}",
                 *(f"{r['test'][m]:.1f}" for m in METRICS),
                 f"{100 * d['distinct_captions']:.1f}%", str(d["vocabulary"]), f"{100 * d['repeated_word']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a corpus prepared by `captioner prepare`")
    parser.add_argument("--work", required=True, help="where runs and results.jsonl go (kept between calls)")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "experiments.toml"))
    parser.add_argument("--only", action="append", help="run only this named run (repeatable)")
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.jsonl"
    runs = tomllib.loads(Path(args.runs).read_text())["run"]
    done = {json.loads(line)["name"] for line in results_path.read_text().splitlines()} \
        if results_path.exists() else set()
    unknown = set(args.only or []) - {r["name"] for r in runs}
    if unknown:
        parser.error(f"no run named {sorted(unknown)[0]!r} in {args.runs}")
    for run in runs:
        if (args.only and run["name"] not in args.only) or run["name"] in done:
            continue
        out = work / slug(run["name"])
        cfg = config_from_dict(run_config(run, args.data, out))
        print(f"== {run['name']}", flush=True)
        started = time.time()
        model_dir = train(cfg, resume=(out / CHECKPOINT).exists())
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        dev = evaluate(model_dir, args.data, "dev", out=model_dir / "eval-dev", progress=False)
        test = evaluate(model_dir, args.data, "test", out=model_dir / "eval-test", progress=False)
        result = {"name": run["name"], "config": run["config"], "set": run.get("set", {}),
                  "train_minutes": sum(r["seconds"] for r in log) / 60, "epochs": len(log),
                  "best_epoch": max(log, key=lambda r: r["dev_cider"])["epoch"],
                  "dev_cider_greedy": max(r["dev_cider"] for r in log),
                  "dev": dev["scores"], "test": test["scores"], "diversity": test["diversity"],
                  "beam": test["meta"]["beam"], "wall_minutes": (time.time() - started) / 60}
        with results_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(json.dumps({k: result[k] for k in ("name", "train_minutes", "best_epoch")}
                         | {"dev CIDEr": round(result["dev"]["CIDEr"], 1)}
                         | {m: round(result["test"][m], 1) for m in METRICS}), flush=True)
    results = [json.loads(line) for line in results_path.read_text().splitlines()] if results_path.exists() else []
    print(table(results))


if __name__ == "__main__":
    main()
