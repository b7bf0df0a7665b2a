"""Reproduce the shipped default model from the raw corpora and time every stage.

    python benchmarks/reproduce_default.py --cc /data/cc --work /tmp/captioner-bench

The corpora: Flickr8k (--flickr8k, default ../shared/data/flickr8k), the
Conceptual Captions subset (--cc: an img2dataset folder; it is the `data/`
folder of the public repository heon01px2020/csci1470-prismer-final-project
at commit e059e1606aef04521e399c2b421438a46658a018, e.g. `git archive
e059e160 data | tar -x -C /data/cc` in a clone, then --cc /data/cc/data) and
coco-val-mini (--coco, default ../shared/data/coco-val-mini: a dev set of
other photos, never trained on).

Runs, each as its own process, as a user would: `captioner prepare` of each
corpus, `features`, `train configs/default.toml` (cross-entropy on Flickr8k and
Conceptual Captions, then self-critical epochs; epochs chosen by the mean CIDEr
of the Flickr8k and coco-val-mini dev sets), benchmarks/tune_decoding.py (beam,
length penalty and tag weight on the same dev sets), `calibrate` (the caption
confidence, on the same dev sets), and `evaluate` on the Flickr8k test split
(once) and on the coco-val-mini dev set; it prints the commands, their
wall-clock times and the metrics. Then it trains the photo-text embedding for gallery
search (`align`, on all three corpora), timed on its own: the total is raw corpora to evaluated
captioner. With --ship the model is copied into src/captioner/assets/default
with its card. --cache keeps the photo features in a folder of your own, so a
second run with another config encodes nothing again (its features stages then
take seconds: add the first run's to compare totals).
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
SHARED = ROOT.parent / "shared" / "data"


def run(cmd: list[str], log: list[dict]) -> float:
    shown = " ".join(cmd).replace(sys.executable, "python")
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


def toml_value(value: object) -> str:
    """A value as TOML: strings, numbers, booleans, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flickr8k", default=str(SHARED / "flickr8k"), help="the Flickr8k folder")
    parser.add_argument("--cc", required=True, help="the Conceptual Captions subset, an img2dataset folder")
    parser.add_argument("--coco", default=str(SHARED / "coco-val-mini"), help="the coco-val-mini folder")
    parser.add_argument("--work", default="/tmp/captioner-bench", help="scratch folder (deleted first)")
    parser.add_argument("--cache", help="a feature cache to keep and reuse (photos already in it are not encoded "
                        "again); default: a new one in the work folder")
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.toml"))
    parser.add_argument("--train-threads", type=int, default=0, metavar="N",
                        help="torch threads for training ([train] threads; default 0: all cores)")
    parser.add_argument("--ship", action="store_true", help="copy the model into src/captioner/assets/default")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    flickr8k, cc, coco, out = (work / name for name in ("flickr8k", "cc", "coco-val-mini", "run"))
    cache = Path(args.cache) if args.cache else work / "features"
    config = tomllib.loads(Path(args.config).read_text())
    # The config names its corpora data/<name>: here they are prepared into the work folder.
    config["data"]["corpora"] = [c | {"prepared": str(work / Path(c["prepared"]).name)}
                                 for c in config["data"]["corpora"]]
    config["data"]["dev"] = [str(work / Path(p).name) for p in config["data"]["dev"]]
    config["data"]["cache"] = str(cache)
    config["train"]["out"] = str(out)
    if args.train_threads:
        config["train"]["threads"] = args.train_threads
    top = config["train"].get("encoder_top", 0)
    below = ["--top", str(top)] if top else []  # a fine-tuned top trains and reads the maps below it
    cfg_path = work / "config.toml"
    cfg_path.write_text("\n".join(f"[{section}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
                                  for section, values in config.items()) + "\n")
    exe = [sys.executable, "-m", "captioner.cli"]
    dev = [arg for path in (flickr8k, coco) for arg in ("--data", str(path))]
    log: list[dict] = []
    started = time.time()
    run([*exe, "prepare", "flickr8k", args.flickr8k, "--out", str(flickr8k)], log)
    run([*exe, "prepare", "img2dataset", args.cc, "--out", str(cc)], log)
    run([*exe, "prepare", "coco", str(Path(args.coco) / "captions_val2017.json"), "--images",
         str(Path(args.coco) / "Images"), "--out", str(coco)], log)
    for data in (flickr8k, cc, coco):
        run([*exe, "features", "--data", str(data), "--cache", str(cache), "--encoder", config["data"]["encoder"],
             *below], log)
    run([*exe, "train", str(cfg_path)], log)
    run([sys.executable, str(ROOT / "benchmarks" / "tune_decoding.py"), "--model", str(out / "model"), *dev,
         "--cache", str(cache), "--beams", "3", "--length-penalties", "0,0.5", "--tag-weights", "0,1,2,4",
         "--write"], log)
    run([*exe, "calibrate", "--model", str(out / "model"), *dev, "--cache", str(cache)], log)
    run([*exe, "evaluate", "--model", str(out / "model"), "--data", str(flickr8k), "--split", "test", "--cache",
         str(cache), "--json"], log)
    run([*exe, "evaluate", "--model", str(out / "model"), "--data", str(coco), "--split", "dev", "--cache",
         str(cache), "--out", str(out / "model" / "eval-coco-val-mini"), "--json"], log)
    total = time.time() - started  # raw corpora to evaluated captioner
    run([*exe, "align", "--model", str(out / "model"), "--data", str(flickr8k), "--data", str(cc), "--data",
         str(coco), "--cache", str(cache)], log)
    report = json.loads((out / "model" / "eval-test" / "report.json").read_text())
    coco_report = json.loads((out / "model" / "eval-coco-val-mini" / "report.json").read_text())
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(epochs, key=lambda r: r["dev_cider"])
    fit = json.loads(__import__("safetensors").safe_open(str(out / "model" / "confidence.safetensors"), "pt")
                     .metadata()["fit"])
    summary = {"machine": machine(), "total_minutes": round(total / 60, 1), "stages": log,
               "epochs_run": len(epochs), "best_epoch": best["epoch"], "dev_cider_greedy": round(best["dev_cider"], 1),
               "dev_by_set": {k: round(v, 1) for k, v in best["dev"].items()},
               "test": {k: round(v, 1) for k, v in report["scores"].items() if k != "photos"},
               "diversity": report["diversity"],
               "coco_val_mini": {k: round(v, 1) for k, v in coco_report["scores"].items() if k != "photos"},
               "coco_val_mini_diversity": coco_report["diversity"], "confidence": fit["check"],
               **{k: report["meta"][k] for k in ("beam", "length_penalty", "block_ngram", "tag_weight")},
               "xe_epochs": sum(r.get("phase", "xe") == "xe" for r in epochs)}
    print(json.dumps(summary, indent=2))
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.ship:
        ship(out / "model", summary, args.config)


def ship(model: Path, summary: dict, config: str) -> None:
    """Copy the model files into the package with a card that says how it was made and how it scores."""
    from safetensors.torch import load_file, save_file

    dest = ROOT / "src" / "captioner" / "assets" / "default"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("config.json", "vocab.json", "tags.json", "confidence.safetensors", "retrieval.safetensors",
                 "search.json", "encoder_top.safetensors"):
        if (model / name).is_file():  # a frozen encoder has no top of its own
            shutil.copyfile(model / name, dest / name)
    # float16 halves the package; the decoder loads it back into float32. The encoder's top (a few MB) stays
    # float32: its BatchNorm statistics are as the encoder's own.
    weights = {k: v.half() for k, v in load_file(str(model / "model.safetensors")).items()}
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "1"})
    test, coco = summary["test"], summary["coco_val_mini"]
    row = lambda scores: " | ".join(f"{scores[k]:.1f}" for k in scores)  # noqa: E731
    card = (ROOT / "benchmarks" / "MODEL_CARD.template.md").read_text().format(
        machine=summary["machine"], minutes=summary["total_minutes"], epochs=summary["epochs_run"],
        best_epoch=summary["best_epoch"], dev_cider=summary["dev_cider_greedy"],
        dev_by_set=", ".join(f"{k} {v}" for k, v in summary["dev_by_set"].items()),
        beam=summary["beam"], length_penalty=summary["length_penalty"], block_ngram=summary["block_ngram"],
        tag_weight=summary["tag_weight"], xe_epochs=summary["xe_epochs"], config=Path(config).read_text().strip(),
        metric_names=" | ".join(test), rule="|".join("---" for _ in test), metrics=row(test), coco=row(coco),
        distinct=f"{summary['diversity']['distinct_captions'] * 100:.1f}",
        vocabulary=summary["diversity"]["vocabulary"],
        coco_vocabulary=summary["coco_val_mini_diversity"]["vocabulary"],
        repeated=f"{summary['diversity']['repeated_word'] * 100:.1f}",
        confidence="\n".join(f"| {name} | {c['photos']} | {c['least_confident_fifth_cider']} | {c['rest_cider']} | "
                             + " | ".join(f"{v['share'] * 100:.0f}% ({v['cider']})" for v in c["levels"].values())
                             + " |" for name, c in summary["confidence"].items()),
        stages="\n".join(f"| `{s['command']}` | {s['seconds']:.0f} |" for s in summary["stages"]))
    (dest / "MODEL_CARD.md").write_text(card)
    print(f"shipped to {dest}")


if __name__ == "__main__":
    main()
