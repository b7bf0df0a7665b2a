"""`captioner train`, `evaluate`, `calibrate` and `align`: making and measuring models."""
from __future__ import annotations

import argparse
import json

from ..models.decoders import KINDS
from .options import DEFAULT_DATA, device_option, positive_int


def add(sub: argparse._SubParsersAction) -> None:
    """Add the commands to the `captioner` parser."""
    p = sub.add_parser("train", help="train a decoder from a TOML config",
                       description="Train a decoder; the epoch with the best dev-split CIDEr is kept in OUT/model. "
                       "Cross-entropy first; with [train] scst_epochs, self-critical training on CIDEr-D then "
                       "continues from the best cross-entropy epoch. A checkpoint is written every epoch: "
                       "--resume continues a stopped run exactly. The config's [model] kind is the decoder: "
                       + "; ".join(f"{name}: {kind.about}" for name, kind in KINDS.items()) + ".")
    p.add_argument("config", help="a TOML config file, or the name of one shipped with captioner (e.g. default, "
                   "flickr8k-attention; an unknown name lists them all)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out folder")
    p.add_argument("--stop-after", type=positive_int, metavar="N",
                   help="stop after N epochs (continue later with --resume)")
    p.add_argument("--ray-workers", type=positive_int, metavar="N", help="train in N data-parallel workers of 1 CPU "
                   "on a Ray cluster (pip install 'captioner[ray]'): each holds a shard of the features and trains "
                   "on its part of every batch; the files written are the same as a local run's (docs/scaling.md)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster for --ray-workers, e.g. auto or "
                   "ray://head:10001 (default: $RAY_ADDRESS, else a local one started for this run)")
    device_option(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="BLEU, METEOR, ROUGE-L and CIDEr on a split",
                       description="Caption every photo of a split and score the captions against the human "
                       "ones with the COCO caption toolkit (needs Java). Writes report.json and report.html.")
    p.add_argument("--model", help="the model folder (default: the shipped model)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the prepared corpus (default {DEFAULT_DATA})")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="default test")
    p.add_argument("--beam", type=positive_int, help="beam width (default: the model's)")
    p.add_argument("--out", help="report folder (default: MODEL/eval-SPLIT)")
    p.add_argument("--cache", help="the feature cache folder (default: DATA/features)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    device_option(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a model's caption confidence on dev sets",
                       description="Caption the dev split of each --data corpus, fit how a caption's confidence is "
                       "weighed (its likelihood, the photo's tags, how close the photo is to the training photos) "
                       "against whether the caption matches the human ones, and save it in the model folder. "
                       "Prints, per dev set and cross-fitted, the mean per-photo CIDEr of the least confident fifth "
                       "of photos and of the rest.")
    p.add_argument("--model", required=True, help="the model folder (written by `captioner train`)")
    p.add_argument("--data", action="append", required=True, help="a prepared corpus whose dev split to fit on "
                   "(repeatable: e.g. Flickr8k and a set of other photos)")
    p.add_argument("--cache", help="the feature cache folder (default: each corpus's features/)")
    p.add_argument("--json", action="store_true", help="print the check and the weights as JSON")
    device_option(p)
    p.set_defaults(run=cmd_calibrate)

    p = sub.add_parser("align", help="train a model's photo-text embedding for gallery search",
                       description="Train the photo-text embedding gallery search uses (a photo tower over the "
                       "encoder's grid, all-MiniLM-L6-v2's top layer fine-tuned, contrastively) on the train "
                       "splits of the corpora, keep the epoch that retrieves best on their dev splits, choose how "
                       "search blends, re-ranks and calls a match weak there, and save it as "
                       "MODEL/retrieval.safetensors. Galleries indexed by the model use it for search; galleries "
                       "indexed before must be indexed again (--rebuild).")
    p.add_argument("--model", required=True, help="the model folder to add the embedding to")
    p.add_argument("--data", action="append", help="a prepared corpus: its train split trains, its dev split "
                   f"chooses (repeatable: e.g. Flickr8k, a broader corpus, a dev-only set; default {DEFAULT_DATA})")
    p.add_argument("--cache", help="the feature cache folder (default: each corpus's features/)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: as the shipped model was "
                   "trained); the best on dev is kept")
    p.add_argument("--photo-features", choices=("own", "tuned"), help="what the photo tower reads: the encoder's "
                   "own features, or those of its top fine-tuned with the decoder (a model trained with [train] "
                   "encoder_top; default: tuned where the model has such a top, which retrieves better on dev)")
    p.add_argument("--retune", action="store_true", help="keep the model's trained embedding and only choose its "
                   "search settings again on the dev splits (after its decoding changed, say)")
    p.add_argument("--no-rerank", action="store_true", help="with --retune: keep the re-ranking settings (choosing "
                   "them scores every dev caption against 100 photos under the captioner: the slow part)")
    p.add_argument("--json", action="store_true", help="print the chosen settings, each epoch and every dev trial "
                   "as JSON")
    device_option(p)
    p.set_defaults(run=cmd_align)


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.config import load_config
    from ..training.train import train

    cfg = load_config(args.config)
    if args.ray_workers:
        from ..distributed.cluster import require_ray
        from ..distributed.train import train_on_ray

        require_ray()
        model_dir = train_on_ray(cfg, args.ray_workers, resume=args.resume, stop_after=args.stop_after,
                                 address=args.ray_address)
    else:
        model_dir = train(cfg, resume=args.resume, stop_after=args.stop_after, progress=not args.quiet,
                          device=args.device)
    print(f"the model selected on the dev split is in {model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate

    result = evaluate(args.model, args.data, args.split, beam=args.beam, out=args.out, cache=args.cache,
                      progress=not args.quiet, device=args.device)
    if args.json:
        print(json.dumps(result["scores"] | {"diversity": result["diversity"]}))
    else:
        for name, value in result["scores"].items():
            print(f"{name:>8}  {value:.1f}" if name != "photos" else f"{name:>8}  {value}")
        d = result["diversity"]
        print(f"distinct captions {d['distinct_captions'] * 100:.1f}% of photos, {d['vocabulary']} words used")
        print(f"report: {result['html']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..training.calibrate import calibrate

    result = calibrate(args.model, args.data, args.cache, progress=not args.quiet, device=args.device)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"confidence saved in {args.model}; weights: "
          + ", ".join(f"{name} {w:+.2f}" for name, w in result["weights"].items())
          + f"; said plainly from {result['plain']:.2f}")
    for name, r in result["check"].items():
        said = "; ".join(f"{hedge} {v['share']:.0%}" + (f" (CIDEr {v['cider']:.1f})" if v["cider"] is not None else "")
                         for hedge, v in r["levels"].items())
        print(f"{name} ({r['photos']} photos): least confident fifth CIDEr {r['least_confident_fifth_cider']:.1f}, "
              f"the rest {r['rest_cider']:.1f}; said {said}")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from ..models.embedding import RetrievalConfig
    from ..training.align import AlignConfig, align, retune

    data, progress = args.data or [DEFAULT_DATA], not args.quiet
    if args.retune:
        result = retune(args.model, data, args.cache, rerank=not args.no_rerank, progress=progress,
                        device=args.device)
    else:
        tc = AlignConfig(**({"epochs": args.epochs} if args.epochs else {}))
        cfg = RetrievalConfig(tuned=args.photo_features == "tuned") if args.photo_features else None
        result = align(args.model, data, args.cache, cfg, tc, progress=progress, device=args.device)
    cfg = result["config"]
    first = [t for t in result["dev_trials"] if (t["blend"], t["tag_weight"]) == (cfg["blend"], cfg["tag_weight"])]
    best = next((t for t in first if (t["rerank_pool"], t["rerank_weight"]) == (cfg["rerank_pool"],
                                                                             cfg["rerank_weight"])), first[0])
    print(json.dumps(result) if args.json else
          f"search settings {'chosen again' if args.retune else 'and embedding saved'} in {args.model}: blend "
          f"{cfg['blend']}, tag weight {cfg['tag_weight']}, re-ranking the best {cfg['rerank_pool']} with weight "
          f"{cfg['rerank_weight']}, weak below {cfg['weak_score']}; mean dev R@1 {best['R@1']:.1f}, "
          f"R@10 {best['R@10']:.1f}" + (" (with --rerank)" if best["rerank_pool"] else ""))
    return 0
