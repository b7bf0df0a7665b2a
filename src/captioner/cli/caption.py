"""`captioner caption`: photos in, one caption each."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CaptionerError
from ..models.decoders import attending, find_kind
from .options import device_option, positive_int, ray_options, ray_wanted, tags_line


def add(sub: argparse._SubParsersAction) -> None:
    """Add the command to the `captioner` parser."""
    p = sub.add_parser("caption", help="caption photos (default: with the shipped model)",
                       description="Caption photos. Folders expand to the photos inside them. Exit status: "
                       "0 when every photo was captioned, 1 when any failed, 2 on a usage error.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photo files or folders")
    p.add_argument("--model", help="a model folder written by `captioner train` (default: the shipped model)")
    p.add_argument("--beam", type=positive_int, default=None,
                   help="beam width (default: the model's, 3 for the shipped one)")
    p.add_argument("--json", action="store_true", help='one JSON object per photo: {"path", "caption", "score", '
                   '"confidence"} or {"path", "error"}; "caption" is the model\'s sentence, and "confidence" (0-1, '
                   'calibrated models only) the chance it is right: below 0.5 the plain output says "I am not sure"')
    p.add_argument("--attention", metavar="DIR", help="write a PNG per photo showing where each word looked "
                   f"(a model whose decoder attends: {' or '.join(attending())})")
    p.add_argument("--tags", action="store_true", help="also show what the encoder's ImageNet classifier "
                   'recognises: up to 5 labels with their probabilities and caption words (in --json: "tags")')
    p.add_argument("--batch-size", type=positive_int, default=16, help="photos encoded together (default 16)")
    device_option(p)
    ray_options(p, "caption")
    p.set_defaults(run=cmd_caption)


def cmd_caption(args: argparse.Namespace) -> int:
    from ..captioning import Captioner
    from ..models.folder import load_model
    from ..visualize import save_attention

    captioner = None
    if ray_wanted(args):
        from ..distributed.batch import caption_stream

        stream = caption_stream(args.model, args.ray_actors, args.ray_address, attention=bool(args.attention))
    else:
        captioner = Captioner.load(args.model, device=args.device)
        stream = captioner.stream
    if args.attention:
        kind = (captioner.model if captioner else load_model(args.model)).decoder.cfg.kind
        if not find_kind(kind).attends:
            raise CaptionerError(f"--attention needs a model that attends to parts of the photo, and this one's "
                                 f"decoder is {kind}: use a model of kind {' or '.join(attending())} "
                                 "(the shipped default is one)")
        try:
            Path(args.attention).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CaptionerError(f"cannot make the --attention folder {args.attention} ({e.strerror}): give a "
                                 "folder you may write to") from None
    pictures: set[str] = set()  # attention picture names written so far: photos may share a name
    failed = 0
    for c in stream(args.photos, beam=args.beam, batch_size=args.batch_size):
        if c.warning:
            print(f"captioner: warning: {c.warning}", file=sys.stderr)
        if c.error:
            failed += 1
            print(json.dumps(c.to_json(), ensure_ascii=False) if args.json else f"captioner: {c.error}",
                  file=sys.stdout if args.json else sys.stderr, flush=True)
            continue
        if args.attention and c.attention is not None:
            name, n = f"{c.path.stem}.attention.png", 1
            while name in pictures:  # a.jpg and a.png, or x/a.jpg and y/a.jpg
                n += 1
                name = f"{c.path.stem}-{n}.attention.png"
            pictures.add(name)
            save_attention(c, Path(args.attention), name)
        if args.json:
            print(json.dumps(c.to_json(tags=args.tags), ensure_ascii=False), flush=True)
            continue
        print(c.said if len(args.photos) == 1 and Path(args.photos[0]).is_file() else f"{c.path}: {c.said}",
              flush=True)
        if args.tags:
            print(tags_line(c.tags), flush=True)
    return 1 if failed else 0
