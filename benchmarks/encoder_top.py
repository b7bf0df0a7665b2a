"""Fine-tuning the encoder's top, measured on dev: the shipped recipe's cross-entropy phase on one corpus, with the
encoder frozen and with its last K blocks and head trained at a scale of the decoder's learning rate.

    python benchmarks/encoder_top.py --data data/flickr8k --dev data/coco-val-mini --work runs/encoder-top \\
        --run 0 --run 1:0.1 --threads 2

Each --run is K or K:SCALE (`[train] encoder_top` and `encoder_lr_scale`; SCALE defaults to 0.1). Every run is
configs/default.toml with the corpus given as its only training corpus, EPOCHS cross-entropy epochs (the
learning-rate schedule compressed to them), no self-critical epochs, one seed (--seed), and greedy dev CIDEr on
the corpus's dev split and each --dev corpus's: the dev splits only, never a test split. Runs go one after
another into WORK/<name> (a stopped run resumes; a finished one is read back). Prints each run's dev CIDEr and
seconds per epoch (training and dev scoring, as metrics.jsonl records them) as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tomllib
from pathlib import Path

import torch

from captioner.training.config import SHIPPED, config_from_dict
from captioner.training.train import CHECKPOINT, LOG, train


def run_config(data: str, dev: list[str], cache: str, out: Path, epochs: int, top: int, scale: float,
               threads: int, seed: int) -> dict:
    """configs/default.toml on `data` alone, `epochs` cross-entropy epochs and no self-critical ones."""
    values = tomllib.loads((SHIPPED / "default.toml").read_text())
    values["data"] = values["data"] | {"corpora": [{"prepared": data}], "dev": [data, *dev], "cache": cache}
    values["train"] |= {"out": str(out), "epochs": epochs, "patience": epochs, "scst_epochs": 0,
                        "encoder_top": top, "encoder_lr_scale": scale, "threads": threads, "seed": seed}
    return values


def parse_run(text: str) -> tuple[int, float]:
    top, _, scale = text.partition(":")
    return int(top), float(scale or 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the training corpus, prepared by `captioner prepare`")
    parser.add_argument("--dev", action="append", default=[], help="another prepared corpus whose dev split scores")
    parser.add_argument("--work", required=True, help="where the runs go (kept between calls)")
    parser.add_argument("--cache", help="the feature cache folder (default: WORK/features)")
    parser.add_argument("--run", action="append", required=True, type=parse_run, metavar="K[:SCALE]")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="[train] seed of every run (runs of seed S > 0 are "
                        "named ...-seedS)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    rows = []
    for top, scale in args.run:
        name = f"top{top}" + (f"-x{scale:g}" if top else "") + (f"-seed{args.seed}" if args.seed else "")
        out = work / name
        cfg = config_from_dict(run_config(args.data, args.dev, args.cache or str(work / "features"), out,
                                          args.epochs, top, scale, args.threads, args.seed))
        log_path = out / LOG
        done = log_path.exists() and len(log_path.read_text().splitlines()) >= args.epochs
        if not done:
            print(f"== {name}", flush=True)
            train(cfg, resume=(out / CHECKPOINT).exists(), progress=True)
        log = [json.loads(line) for line in log_path.read_text().splitlines()]
        for r in log:
            each = ", ".join(f"{k} {v:.1f}" for k, v in r["dev"].items())
            print(f"{name} epoch {r['epoch']}: loss {r['train_loss']:.3f}, dev CIDEr {r['dev_cider']:.1f} ({each}), "
                  f"{r['seconds']:.0f} s", flush=True)
        rows.append((name, top, scale, log))
    names = list(rows[0][3][0]["dev"])
    print(f"\n| run | encoder_top | lr scale | greedy dev CIDEr by epoch: mean ({', '.join(names)}) | s/epoch |")
    print("|---|---|---|---|---|")
    for name, top, scale, log in rows:
        curve = ", ".join(f"{r['dev_cider']:.1f} ({', '.join(f'{v:.1f}' for v in r['dev'].values())})" for r in log)
        seconds = statistics.median(r["seconds"] for r in log)
        print(f"| {name} | {top} | {f'{scale:g}' if top else '-'} | {curve} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
