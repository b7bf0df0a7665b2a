"""How to train the search embedding of a model with a fine-tuned encoder top: its photo tower reading the
encoder's own features or the top's (the decoder's), with or without soft targets for captions worded alike.
Trains the embedding each way asked on the same captions and prints the dev recall (text -> photo) of every
epoch; no search settings are tuned.

    python benchmarks/align_features.py --model runs/top/model --data data/flickr8k --data data/coco-val-mini \\
        --cache features/ --epochs 6 --threads 1 --way own --way tuned --way tuned+soft

Dev splits only: the epoch and the choice are made there.
"""
from __future__ import annotations

import argparse
import json

import torch

from captioner.captioning import Captioner
from captioner.models.embedding import RetrievalConfig
from captioner.training.align import AlignConfig, load_pairs, train_embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder whose encoder top was fine-tuned")
    parser.add_argument("--data", action="append", required=True, help="prepared corpora (train and dev splits)")
    parser.add_argument("--cache", help="the feature cache folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--way", action="append", choices=("own", "tuned", "own+soft", "tuned+soft"),
                        help="features the tower reads, +soft: soft targets (repeatable; default own and tuned)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = Captioner.load(args.model, device="cpu")
    if captioner.model.top is None:
        parser.error(f"{args.model} has no fine-tuned encoder top: both ways would read the same features")
    train = load_pairs(captioner.model, args.data, "train", args.cache, True, "cpu", decoded=True)
    dev = load_pairs(captioner.model, args.data, "dev", args.cache, True, "cpu", decoded=True)
    results = {}
    for name in args.way or ["own", "tuned"]:
        _, history = train_embedding(train, dev, RetrievalConfig(tuned=name.startswith("tuned")),
                                     AlignConfig(epochs=args.epochs, soft=name.endswith("+soft")), progress=False)
        results[name] = history
        for record in history:
            each = ", ".join(f"{p.name} R@1 {record[p.name]['R@1']:.1f} R@10 {record[p.name]['R@10']:.1f}"
                             for p in dev)
            print(f"{name} epoch {record['epoch']}: loss {record['loss']:.3f}; {each}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
