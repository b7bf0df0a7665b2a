"""Choose the beam width and length penalty of a model on the dev split (never on test).

    python benchmarks/tune_decoding.py --model runs/default/model --data data/flickr8k --write

Scores every (beam, length penalty) pair on the dev split with the COCO caption
toolkit, prints the table, and with --write stores the pair with the best dev
CIDEr in the model's config.json, which `captioner caption` and `evaluate` use.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from captioner.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="data/flickr8k")
    parser.add_argument("--beams", default="1,3,5")
    parser.add_argument("--length-penalties", default="0,0.5,1")
    parser.add_argument("--write", action="store_true", help="store the best pair in the model's config.json")
    args = parser.parse_args()
    rows = []
    for beam in map(int, args.beams.split(",")):
        for penalty in map(float, args.length_penalties.split(",")):
            if beam == 1 and penalty:
                continue  # greedy ignores the length penalty
            result = evaluate(args.model, args.data, "dev", beam=beam, length_penalty=penalty, progress=False,
                              out=Path(args.model) / f"eval-dev-b{beam}-lp{penalty}")
            s = result["scores"]
            rows.append({"beam": beam, "length_penalty": penalty, **{k: round(v, 1) for k, v in s.items()},
                         "mean_words": round(result["diversity"]["mean_length"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    best = max(rows, key=lambda r: r["CIDEr"])  # ties: the first, i.e. the narrower beam
    print(f"best on dev: beam {best['beam']}, length penalty {best['length_penalty']} (CIDEr {best['CIDEr']})")
    if args.write:
        path = Path(args.model) / "config.json"
        config = json.loads(path.read_text())
        config["decode"] |= {"beam": best["beam"], "length_penalty": best["length_penalty"]}
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote them to {path}")


if __name__ == "__main__":
    main()
