"""Choose the beam width, length penalty and n-gram blocking of a model on the dev split (never on test).

    python benchmarks/tune_decoding.py --model runs/default/model --data data/flickr8k --write

Scores every (beam, length penalty, blocked n-gram size) setting on the dev
split with the COCO caption toolkit, prints the table, and with --write stores
the setting with the best dev CIDEr in the model's config.json, which
`captioner caption` and `evaluate` use.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from captioner.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data/flickr8k")
    parser.add_argument("--beams", default="1,3,5")
    parser.add_argument("--length-penalties", default="0,0.5,1")
    parser.add_argument("--block-ngrams", default="0", help="n-gram sizes no caption may repeat (0: no blocking)")
    parser.add_argument("--write", action="store_true", help="store the best setting in the model's config.json")
    args = parser.parse_args()
    rows = []
    for beam, penalty, block in itertools.product(map(int, args.beams.split(",")),
                                                  map(float, args.length_penalties.split(",")),
                                                  map(int, args.block_ngrams.split(","))):
        if beam == 1 and penalty:
            continue  # greedy ignores the length penalty
        result = evaluate(args.model, args.data, "dev", beam=beam, length_penalty=penalty, block_ngram=block,
                          progress=False, out=Path(args.model) / f"eval-dev-b{beam}-lp{penalty}-block{block}")
        s = result["scores"]
        rows.append({"beam": beam, "length_penalty": penalty, "block_ngram": block,
                     **{k: round(v, 1) for k, v in s.items()},
                     "mean_words": round(result["diversity"]["mean_length"], 1),
                     "distinct": round(result["diversity"]["distinct_captions"], 3)})
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["CIDEr"])  # ties: the first, i.e. the narrower beam, no blocking
    print(f"best on dev: beam {best['beam']}, length penalty {best['length_penalty']}, "
          f"block_ngram {best['block_ngram']} (CIDEr {best['CIDEr']})")
    if args.write:
        path = Path(args.model) / "config.json"
        config = json.loads(path.read_text())
        config["decode"] |= {k: best[k] for k in ("beam", "length_penalty", "block_ngram")}
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote them to {path}")


if __name__ == "__main__":
    main()
