"""Which pooled vector should the tags read in a model with a fine-tuned encoder top: the encoder's own (what its
ImageNet classifier was trained on) or the fine-tuned top's?

    python benchmarks/encoder_top_tags.py --model runs/encoder-top/top1-x0.1/model \\
        --data data/flickr8k --data data/coco-val-mini --tag-weight 4

On each corpus's dev split (never a test split): how often the classifier's likeliest class is the same from
both vectors, the mean total-variation distance between the two class distributions, and the dev CIDEr-D of
the model's captions (its decoding settings, --beam and --tag-weight over them) guided by tags from each, and
unguided.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from captioner.evaluation.metrics import dev_cider
from captioner.features.splits import model_features
from captioner.models.decode import decode
from captioner.models.encoders import load_encoder
from captioner.models.folder import load_model
from captioner.models.tags import probabilities, tagger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder with a fine-tuned encoder top")
    parser.add_argument("--data", action="append", required=True, help="a prepared corpus with a dev split")
    parser.add_argument("--cache", help="the feature cache folder (default: each corpus's features/)")
    parser.add_argument("--beam", type=int)
    parser.add_argument("--tag-weight", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model, fast=True, device="cpu")
    if model.top is None:
        parser.error(f"{args.model} has no fine-tuned encoder top")
    tags = tagger(model, load_encoder(model.encoder, model.input_size, "cpu"))
    settings = model.decode.override(beam=args.beam, tag_weight=args.tag_weight)
    result = {"model": args.model, "decode": asdict(settings)}
    for data in args.data:
        split = model_features(model, data, "dev", args.cache, progress=False, device="cpu")
        own, tuned = probabilities(tags.classifier, split.pooled), probabilities(tags.classifier, split.tuned[0])
        row = {"photos": len(split.paths),
               "same_top_class": round(float((own.argmax(1) == tuned.argmax(1)).float().mean()), 3),
               "total_variation": round(float((own - tuned).abs().sum(1).mean() / 2), 3)}
        for name, tagged, guide in (("unguided", None, None), ("tags_from_own", split.pooled, tags),
                                    ("tags_from_tuned", split.tuned[0], tags)):
            beams, _ = decode(model.decoder, *split.decoded, settings, guide, tagged=tagged)
            row[f"cider_{name}"] = round(dev_cider([model.vocab.decode(b[0].tokens) for b in beams],
                                                   split.references), 2)
        result[Path(data).name] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
