"""Choose a model's decoding settings on dev sets (never on test).

    python benchmarks/tune_decoding.py --model runs/default/model --data data/flickr8k --data data/coco-val-mini --write

Scores every (beam, length penalty, blocked n-gram size, tag weight) setting on
the dev split of each --data corpus with the COCO caption toolkit, prints one
line per setting with each set's CIDEr and their mean, and with --write stores
the setting with the best mean dev CIDEr in the model's config.json, which
`captioner caption` and `evaluate` use.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from captioner.evaluation.evaluate import evaluate


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", action="append", help="a prepared corpus whose dev split scores (repeatable; "
                        "default data/flickr8k)")
    parser.add_argument("--cache", help="the feature cache folder (default: each corpus's features/)")
    parser.add_argument("--beams", default="1,3,5")
    parser.add_argument("--length-penalties", default="0,0.5,1")
    parser.add_argument("--block-ngrams", default="0", help="n-gram sizes no caption may repeat (0: no blocking)")
    parser.add_argument("--tag-weights", default="0", help="guided decoding weights of the tags' words (0: none)")
    parser.add_argument("--write", action="store_true", help="store the best setting in the model's config.json")
    parser.add_argument("--out", help="keep each setting's evaluation report in this folder (default: none kept; "
                        "never the model folder, which may be the shipped one)")
    args = parser.parse_args()
    datasets = args.data or ["data/flickr8k"]
    rows = []
    scratch = tempfile.TemporaryDirectory()
    reports = Path(args.out or scratch.name)
    for beam, penalty, block, weight in itertools.product(map(int, args.beams.split(",")),
                                                          floats(args.length_penalties),
                                                          map(int, args.block_ngrams.split(",")),
                                                          floats(args.tag_weights)):
        if beam == 1 and penalty:
            continue  # greedy ignores the length penalty
        setting = {"beam": beam, "length_penalty": penalty, "block_ngram": block, "tag_weight": weight}
        row = dict(setting)
        for data in datasets:
            name = Path(data).name
            result = evaluate(args.model, data, "dev", beam=beam, length_penalty=penalty, block_ngram=block,
                              tag_weight=weight, cache=args.cache, progress=False,
                              out=reports / f"eval-dev-{name}-b{beam}-lp{penalty}-block{block}-tag{weight}")
            row |= {f"{name} {k}": round(v, 1) for k, v in result["scores"].items() if k in ("BLEU-4", "CIDEr")}
            row |= {f"{name} words": result["diversity"]["vocabulary"],
                    f"{name} distinct": round(result["diversity"]["distinct_captions"], 3)}
        row["CIDEr"] = round(sum(row[f"{Path(d).name} CIDEr"] for d in datasets) / len(datasets), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    scratch.cleanup()
    best = max(rows, key=lambda r: r["CIDEr"])  # ties: the first, i.e. the narrower beam, no blocking, no tags
    chosen = {k: best[k] for k in ("beam", "length_penalty", "block_ngram", "tag_weight")}
    print(f"best on dev: {json.dumps(chosen)} (mean CIDEr {best['CIDEr']})")
    if args.write:
        path = Path(args.model) / "config.json"
        config = json.loads(path.read_text())
        config["decode"] |= chosen
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"wrote them to {path}")


if __name__ == "__main__":
    main()
