"""Training locally and through Ray Train on one small config, in one run: seconds per epoch and dev CIDEr.

    python benchmarks/ray_training.py --flickr8k ../shared/data/flickr8k --train 2000 --dev 500 --epochs 3 \
        --cache /path/to/a/feature/cache

A corpus of the first --train photos of Flickr8k's train split and --dev of its
dev split is prepared in a temporary folder, its features encoded (or found in
--cache), then the same config trains twice: locally (torch on every core) and
with `--ray-workers 2` on a local Ray instance of 2 CPUs (1 thread per worker).
Printed per epoch: seconds (training and rank 0's dev decoding, as
metrics.jsonl records them) and dev CIDEr (greedy), then each run's wall time
including start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from captioner.data.corpus import prepare
from captioner.distributed.train import train_on_ray
from captioner.features.splits import cache_training_features
from captioner.training.config import config_from_dict
from captioner.training.train import train

ROOT = Path(__file__).resolve().parents[1]


def subset(flickr8k: Path, folder: Path, train: int, dev: int) -> Path:
    """A prepared Flickr8k corpus of the first `train` train and `dev` dev photos (photos linked, not copied)."""
    src = folder / "src"
    src.mkdir(parents=True)
    (src / "Images").symlink_to(flickr8k.resolve() / "Images")
    names = (flickr8k / "Flickr_8k.trainImages.txt").read_text().split()[:train]
    devs = (flickr8k / "Flickr_8k.devImages.txt").read_text().split()[:dev]
    keep = set(names + devs)
    lines = [line for line in (flickr8k / "Flickr8k.token.txt").read_text().splitlines() if line.split("#")[0] in keep]
    (src / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (src / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    (src / "Flickr_8k.devImages.txt").write_text("\n".join(devs) + "\n")
    (src / "Flickr_8k.testImages.txt").write_text("")
    prepare("flickr8k", src, folder / "prepared")
    return folder / "prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flickr8k", default=str(ROOT.parent / "shared" / "data" / "flickr8k"))
    parser.add_argument("--train", type=int, default=2000, help="training photos (default 2000)")
    parser.add_argument("--dev", type=int, default=500, help="dev photos (default 500)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--encoder", default="efficientnet-lite2")
    parser.add_argument("--cache", help="a feature cache folder holding (or to hold) the photos' features")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the local run")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="captioner-ray-training-"))
    corpus = subset(Path(args.flickr8k), work, args.train, args.dev)

    def config(out: str):
        return config_from_dict({
            "data": {"prepared": str(corpus), "encoder": args.encoder, "cache": args.cache or str(work / "features")},
            "model": {"kind": "attention", "embed_dim": 256, "hidden_dim": 256, "attention_dim": 256, "dropout": 0.3},
            "train": {"out": str(work / out), "epochs": args.epochs, "batch_captions": 80, "lr": 1e-3, "min_lr": 5e-5,
                      "warmup_steps": 50, "patience": args.epochs, "seed": 0},
        })

    cache_training_features(config("local").data, progress=False)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    torch.set_num_threads(args.threads)
    walls = {}
    for name, run in (("local", lambda: train(config("local"), progress=False)),
                      ("ray", lambda: train_on_ray(config("ray"), 2, progress=False))):
        started = time.perf_counter()
        run()
        walls[name] = time.perf_counter() - started
    logs = {name: [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
            for name in walls}
    print(f"corpus: {args.train} train photos, {args.dev} dev photos ({args.encoder}); local: {args.threads} "
          f"threads; Ray: 2 workers x 1 CPU")
    print("epoch  local s  Ray s  local dev CIDEr  Ray dev CIDEr  local loss  Ray loss")
    for a, b in zip(logs["local"], logs["ray"]):
        print(f"{a['epoch']:>5}  {a['seconds']:7.1f}  {b['seconds']:5.1f}  {a['dev_cider']:15.1f}  "
              f"{b['dev_cider']:13.1f}  {a['train_loss']:10.3f}  {b['train_loss']:8.3f}")
    print(json.dumps({name: {"wall_s": round(wall, 1),
                             "seconds_per_epoch_mean": round(sum(r["seconds"] for r in logs[name])
                                                             / len(logs[name]), 1),
                             "last_dev_cider": round(logs[name][-1]["dev_cider"], 2)} for name, wall in walls.items()},
                     indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
