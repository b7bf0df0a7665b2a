"""`captioner prepare` and `captioner features`: a corpus read and cleaned, its photos encoded once."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.readers import READERS
from ..models.encoders import DEFAULT_INPUT_SIZE, ENCODERS
from .options import DEFAULT_DATA, device_option, positive_int, ray_options, ray_wanted, whole_number


def add(sub: argparse._SubParsersAction) -> None:
    """Add the commands to the `captioner` parser."""
    p = sub.add_parser("prepare", help="read a corpus, clean captions, build the vocabulary",
                       description="Read a caption corpus, clean its captions and build the vocabulary from "
                       "the train split. Flawed lines are skipped and reported (the first few with file:line).")
    p.add_argument("kind", choices=sorted(READERS), help="; ".join(f"{name}: {READERS[name].source}"
                                                                 for name in sorted(READERS)))
    p.add_argument("source", help="the corpus folder (flickr8k, img2dataset) or file (the others)")
    p.add_argument("--images", help="the folder of the photos (default: Images/ beside the source); for "
                   "img2dataset .tar shards, where their photos are extracted (default: OUT/images)")
    p.add_argument("--out", help="where to write the prepared corpus (default data/KIND, e.g. data/flickr8k)")
    p.add_argument("--min-count", type=positive_int, default=5,
                   help="keep words seen at least this often in train (default 5)")
    p.add_argument("--max-len", type=positive_int, default=30,
                   help="longest caption in words used for training (default 30)")
    p.add_argument("--strict", action="store_true", help="stop at the first flawed line instead of skipping it")
    p.add_argument("--force", action="store_true", help="replace a corpus prepared in OUT from another source")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("features", help="encode every corpus photo once, cached on disk",
                       description="Encode the photos of a prepared corpus with a frozen encoder. Features are "
                       "cached by photo content and encoder; an interrupted run resumes where it stopped.")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the prepared corpus (default {DEFAULT_DATA})")
    p.add_argument("--encoder", default="efficientnet-lite2", choices=ENCODERS, metavar="ENCODER",
                   help="; ".join(f"{name}: {e.about}" for name, e in ENCODERS.items())
                   + " (default efficientnet-lite2)")
    p.add_argument("--input-size", type=positive_int, default=DEFAULT_INPUT_SIZE,
                   help=f"photos are squashed to this square (default {DEFAULT_INPUT_SIZE})")
    p.add_argument("--cache", help="the feature cache folder (default: DATA/features)")
    p.add_argument("--top", type=whole_number(0), default=0, metavar="K",
                   help="cache the map below the encoder's last K blocks instead, what training with [train] "
                   "encoder_top = K reads (default 0: the features)")
    device_option(p)
    ray_options(p, "encode")
    p.set_defaults(run=cmd_features)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.corpus import prepare

    report = prepare(args.kind, args.source, args.out, image_root=args.images, min_count=args.min_count,
                     max_len=args.max_len, strict=args.strict, force=args.force)
    print(report.summary())
    print(f"wrote {report.out_dir}/captions.json, vocab.json and report.json")
    return 0

def cmd_features(args: argparse.Namespace) -> int:
    from ..data.corpus import load_prepared
    from ..features.splits import ensure_features

    encode, device = None, args.device
    if ray_wanted(args):
        from ..distributed.batch import encode_stream
        from ..distributed.cluster import DEVICE

        encode = encode_stream(args.encoder, args.input_size, args.ray_actors, args.ray_address, args.top)
        device = DEVICE  # the features' key names the precision of the actors' device
    prepared = load_prepared(args.data)
    cache_root = args.cache or str(Path(args.data) / "features")
    cache, hashes = ensure_features(prepared, args.encoder, args.input_size, cache_root, ("train", "dev", "test"),
                                    progress=not args.quiet, encode=encode, device=device, top=args.top)
    what = f"{args.encoder} maps below its top (K = {args.top})" if args.top else f"{args.encoder} features"
    print(f"{len(hashes):,} photos have {what} in {cache.folder}")
    return 0
