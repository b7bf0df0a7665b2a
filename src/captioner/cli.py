"""The `captioner` command: caption, prepare, features, train, evaluate, calibrate, align, index, similar, search,
serve."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .corpus import KINDS
from .errors import CaptionerError

DEFAULT_DATA = "data/flickr8k"

EXAMPLES = """\
examples:
  captioner caption photo.jpg holiday/            caption photos with the shipped model
  captioner prepare flickr8k ~/Flickr8k --out data/flickr8k
  captioner prepare img2dataset ~/cc3m-shards --out data/cc  an img2dataset / webdataset corpus
  captioner features --data data/flickr8k         encode every photo once (cached)
  captioner train configs/flickr8k-attention.toml
  captioner evaluate --model runs/attention/model --split test --beam 3
  captioner index ~/Pictures                      caption and embed a collection into the gallery
  captioner search "a dog catching a frisbee"     find gallery photos by description
  captioner similar photo.jpg -k 5                gallery photos most like this one
  captioner serve --gallery ~/.local/share/captioner/gallery.db   the web app on http://127.0.0.1:8000/
"""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (else a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def ray_wanted(args: argparse.Namespace) -> bool:
    """Whether to run on Ray (--ray, or a --ray-address); checks first that Ray is installed."""
    if not (args.ray or args.ray_address):
        return False
    from .raycluster import require_ray

    require_ray()
    return True


def cmd_caption(args: argparse.Namespace) -> int:
    from .api import Captioner
    from .decoders import ATTENDING
    from .modelfolder import load_model
    from .visualize import save_attention

    captioner = None
    if ray_wanted(args):
        from .raybatch import caption_stream

        stream = caption_stream(args.model, args.ray_actors, args.ray_address, attention=bool(args.attention))
    else:
        captioner = Captioner.load(args.model)
        stream = captioner.stream
    if args.attention:
        kind = (captioner.model if captioner else load_model(args.model)).decoder.cfg.kind
        if kind not in ATTENDING:
            raise CaptionerError(f"--attention needs a model that attends to parts of the photo, and this one's "
                                 f"decoder is {kind}: use a model of kind {' or '.join(sorted(ATTENDING))} "
                                 "(the shipped default is one)")
        Path(args.attention).mkdir(parents=True, exist_ok=True)
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
            print("  tags: " + (", ".join(f"{t.label} {t.p:.0%}" + (f" ({t.word})" if t.word else "")
                                          for t in c.tags) or "none"), flush=True)
    return 1 if failed else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .corpus import prepare

    report = prepare(args.kind, args.source, args.out, image_root=args.images, min_count=args.min_count,
                     max_len=args.max_len, strict=args.strict)
    print(report.summary())
    print(f"wrote {args.out}/captions.json, vocab.json and report.json")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .corpus import load_prepared
    from .dataset import ensure_features

    encode = None
    if ray_wanted(args):
        from .raybatch import encode_stream

        encode = encode_stream(args.encoder, args.input_size, args.ray_actors, args.ray_address)
    prepared = load_prepared(args.data)
    cache_root = args.cache or str(Path(args.data) / "features")
    cache, hashes = ensure_features(prepared, args.encoder, args.input_size, cache_root, ("train", "dev", "test"),
                                    encode=encode)
    print(f"{len(hashes):,} photos have {args.encoder} features in {cache.folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config)
    if args.ray_workers:
        from .raycluster import require_ray
        from .raytrain import train_on_ray

        require_ray()
        model_dir = train_on_ray(cfg, args.ray_workers, resume=args.resume, stop_after=args.stop_after,
                                 address=args.ray_address)
    else:
        model_dir = train(cfg, resume=args.resume, stop_after=args.stop_after)
    print(f"the model selected on the dev split is in {model_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    result = evaluate(args.model, args.data, args.split, beam=args.beam, out=args.out, cache=args.cache)
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
    from .calibrate import calibrate

    result = calibrate(args.model, args.data, args.cache)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"confidence saved in {args.model}; weights: "
          + ", ".join(f"{name} {w:+.2f}" for name, w in result["weights"].items()))
    for name, r in result["check"].items():
        print(f"{name} ({r['photos']} photos): least confident fifth CIDEr {r['least_confident_fifth_cider']:.1f}, "
              f"the rest {r['rest_cider']:.1f}; {r['below_low']:.0%} said with doubt")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from .retrieval import TrainConfig, align

    tc = TrainConfig(**({"epochs": args.epochs} if args.epochs else {}))
    result = align(args.model, args.data or [DEFAULT_DATA], args.cache, tc=tc)
    cfg = result["config"]
    best = next(t for t in result["dev_trials"] if all(t[k] == cfg[k] for k in ("blend", "tag_weight",
                                                                                "rerank_pool", "rerank_weight")))
    print(json.dumps(result) if args.json else
          f"search embedding saved in {args.model}: blend {cfg['blend']}, tag weight {cfg['tag_weight']}, "
          f"re-ranking the best {cfg['rerank_pool']} "
          f"with weight {cfg['rerank_weight']}, weak below {cfg['weak_score']}; mean dev R@1 {best['R@1']:.1f}, "
          f"R@10 {best['R@10']:.1f} (with --rerank)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    stream = None
    if ray_wanted(args):
        from .raybatch import caption_stream

        stream = caption_stream(args.model, args.ray_actors, args.ray_address)
    gallery = Gallery.create(args.db, model=args.model, rebuild=args.rebuild)
    try:
        report = gallery.index(args.paths, progress=not args.quiet, batch_size=args.batch_size, stream=stream)
    finally:
        gallery.close()
    for path, reason in report.failed.items():
        print(json.dumps({"path": path, "error": reason}, ensure_ascii=False) if args.json
              else f"captioner: {reason}", file=sys.stdout if args.json else sys.stderr)
    print(json.dumps({"db": str(gallery.db)} | {k: v for k, v in vars(report).items() if k != "failed"})
          if args.json else f"{gallery.db}: {report.summary()}")
    return 1 if report.failed else 0


def _print_matches(matches, as_json: bool) -> None:
    if not as_json and matches and all(m.weak for m in matches):
        print("captioner: nothing in the gallery matches this well; the closest photos:", file=sys.stderr)
    for rank, m in enumerate(matches, 1):
        tags = ", ".join(f"{t['word'] or t['label']} {t['p']:.2f}" for t in m.tags)
        print(json.dumps({"rank": rank} | m.to_json(), ensure_ascii=False) if as_json
              else f"{m.score:6.3f}  {m.path}  {m.caption}" + (f"  [{tags}]" if tags else "")
              + (f"  (by {m.matched_by}{', weak' if m.weak else ''})" if m.why else ""), flush=True)


def cmd_similar(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    with Gallery.open(args.db, model=args.model) as gallery:
        _print_matches(gallery.similar(args.photo, args.k, args.by), args.json)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    if (args.text is None) == (args.queries is None):
        raise CaptionerError("give either a search TEXT or --queries FILE")
    with Gallery.open(args.db, model=args.model) as gallery:
        if args.text is not None:
            _print_matches(gallery.search(args.text, args.k, args.rerank), args.json)
            return 0
        with open(args.queries, encoding="utf-8") as f:
            for query in (line.strip() for line in f):
                if query:
                    found = gallery.search(query, args.k, args.rerank)
                    print(json.dumps({"query": query, "paths": [str(m.path) for m in found],
                                      "scores": [round(m.score, 4) for m in found],
                                      "weak": [m.weak for m in found]}, ensure_ascii=False), flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .web.app import serve

    token = args.token or os.environ.get("CAPTIONER_TOKEN") or None
    serve(args.model, args.gallery, args.host, args.port, args.max_upload_mb * 2**20, args.max_queue, token,
          args.public, args.allowed_host)
    return 0


def ray_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", action="store_true", help=f"{what} on a Ray cluster (pip install 'captioner[ray]'): "
                   "the one in --ray-address or $RAY_ADDRESS, else a local one started for this run; an actor pool "
                   "loads the model once per actor, results come back in input order (see docs/scaling.md)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to use, e.g. auto (one started with "
                   "`ray start` on this machine) or ray://head:10001 (implies --ray; default: $RAY_ADDRESS)")
    p.add_argument("--ray-actors", type=positive_int, metavar="N", help="actors of 1 CPU each, running torch with "
                   "1 thread (default: one per CPU of the cluster)")


def gallery_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="the gallery database (default: $CAPTIONER_GALLERY, else "
                   "~/.local/share/captioner/gallery.db)")
    p.add_argument("--model", help="the model folder that indexed the gallery (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Describe photos in English sentences; "
                                     "train and evaluate captioners.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
                   "(attention models)")
    p.add_argument("--tags", action="store_true", help="also show what the encoder's ImageNet classifier "
                   'recognises: up to 5 labels with their probabilities and caption words (in --json: "tags")')
    p.add_argument("--batch-size", type=positive_int, default=16, help="photos encoded together (default 16)")
    ray_options(p, "caption")
    p.set_defaults(run=cmd_caption)

    p = sub.add_parser("prepare", help="read a corpus, clean captions, build the vocabulary",
                       description="Read a caption corpus, clean its captions and build the vocabulary from "
                       "the train split. Flawed lines are skipped and reported (the first few with file:line).")
    p.add_argument("kind", choices=KINDS,
                   help="flickr8k: a folder with Flickr8k.token.txt, the split files and Images/; csv: a "
                   "captions.txt with image,caption; karpathy: dataset_*.json; coco: captions_*.json; "
                   "table: a CSV or JSONL of image, caption[, split]; img2dataset: an img2dataset or webdataset "
                   "output folder (shard folders of KEY.jpg + KEY.txt, or .tar shards)")
    p.add_argument("source", help="the corpus folder (flickr8k, img2dataset) or file (the others)")
    p.add_argument("--images", help="the folder of the photos (default: Images/ beside the source); for "
                   "img2dataset .tar shards, where their photos are extracted (default: OUT/images)")
    p.add_argument("--out", default=DEFAULT_DATA, help=f"where to write the prepared corpus (default {DEFAULT_DATA})")
    p.add_argument("--min-count", type=int, default=5, help="keep words seen at least this often in train (default 5)")
    p.add_argument("--max-len", type=int, default=30, help="longest caption in words used for training (default 30)")
    p.add_argument("--strict", action="store_true", help="stop at the first flawed line instead of skipping it")
    p.set_defaults(run=cmd_prepare)

    p = sub.add_parser("features", help="encode every corpus photo once, cached on disk",
                       description="Encode the photos of a prepared corpus with a frozen encoder. Features are "
                       "cached by photo content and encoder; an interrupted run resumes where it stopped.")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the prepared corpus (default {DEFAULT_DATA})")
    p.add_argument("--encoder", default="efficientnet-lite2",
                   help="efficientnet-lite0, efficientnet-lite1, efficientnet-lite2 (default), or dinov2-vits14 "
                   "(pip install 'captioner[dinov2]'; input size a multiple of 14)")
    p.add_argument("--input-size", type=int, default=224, help="photos are squashed to this square (default 224)")
    p.add_argument("--cache", help="the feature cache folder (default: DATA/features)")
    ray_options(p, "encode")
    p.set_defaults(run=cmd_features)

    p = sub.add_parser("train", help="train a decoder from a TOML config",
                       description="Train a decoder; the epoch with the best dev-split CIDEr is kept in OUT/model. "
                       "Cross-entropy first; with [train] scst_epochs, self-critical training on CIDEr-D then "
                       "continues from the best cross-entropy epoch. A checkpoint is written every epoch: "
                       "--resume continues a stopped run exactly.")
    p.add_argument("config", help="a TOML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's out folder")
    p.add_argument("--stop-after", type=int, metavar="N", help="stop after N epochs (continue later with --resume)")
    p.add_argument("--ray-workers", type=positive_int, metavar="N", help="train in N data-parallel workers of 1 CPU "
                   "on a Ray cluster (pip install 'captioner[ray]'): each holds a shard of the features and trains "
                   "on its part of every batch; the files written are the same as a local run's (docs/scaling.md)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster for --ray-workers, e.g. auto or "
                   "ray://head:10001 (default: $RAY_ADDRESS, else a local one started for this run)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="BLEU, METEOR, ROUGE-L and CIDEr on a split",
                       description="Caption every photo of a split and score the captions against the human "
                       "ones with the COCO caption toolkit (needs Java). Writes report.json and report.html.")
    p.add_argument("--model", help="the model folder (default: the shipped model)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the prepared corpus (default {DEFAULT_DATA})")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"], help="default test")
    p.add_argument("--beam", type=int, help="beam width (default: the model's)")
    p.add_argument("--out", help="report folder (default: MODEL/eval-SPLIT)")
    p.add_argument("--cache", help="the feature cache folder (default: DATA/features)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
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
    p.add_argument("--json", action="store_true", help="print the chosen settings, each epoch and every dev trial "
                   "as JSON")
    p.set_defaults(run=cmd_align)

    p = sub.add_parser("index", help="caption and embed photos into a gallery (incremental)",
                       description="Caption and embed every photo under the given folders into a gallery. A "
                       "second run only touches new, changed and removed photos (a moved photo is found again "
                       "by its content); an interrupted run resumes. Photos that fail are recorded and listed at "
                       "the end. Exit status: 0 when every photo was indexed, 1 when any failed.")
    p.add_argument("paths", nargs="+", metavar="PHOTOS", help="photo files or folders")
    gallery_options(p)
    p.add_argument("--rebuild", action="store_true", help="forget the gallery's photos and index them again "
                   "(after changing the model)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="photos encoded together (default 16)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    ray_options(p, "caption and embed the photos (this process still writes the gallery)")
    p.set_defaults(run=cmd_index)

    p = sub.add_parser("similar", help="gallery photos most like a photo",
                       description="Gallery photos most like PHOTO (which need not be in the gallery), by image "
                       "vectors, caption vectors or a blend of both.")
    p.add_argument("photo", metavar="PHOTO", help="a photo file")
    p.add_argument("-k", type=positive_int, default=8, help="how many photos (default 8)")
    p.add_argument("--by", choices=["both", "visual", "caption"], default="both",
                   help="visual: what the photos look like; caption: what their captions say; both (default)")
    gallery_options(p)
    p.set_defaults(run=cmd_similar)

    p = sub.add_parser("search", help="gallery photos that match a description",
                       description="Gallery photos that match a description: its text vector against each "
                       "photo's caption vector and image vector in the model's photo-text embedding (`captioner "
                       "align`). A photo whose tags (what the encoder's classifier recognised, shown after each "
                       "result) name a word of the description ranks higher. Each result says which part counted "
                       "most (caption, photo or tags) and, when it scores below what only the worst 5% of dev "
                       "captions score with their own photo, that it is weak; --json gives every part (why).")
    p.add_argument("text", nargs="?", metavar="TEXT", help="the description")
    p.add_argument("-k", type=positive_int, default=8, help="how many photos (default 8)")
    p.add_argument("--rerank", action="store_true", help="re-rank the best candidates by how likely the "
                   "captioner finds TEXT as their caption (slower, usually better)")
    p.add_argument("--queries", metavar="FILE", help="one description per line, answered in one process; "
                   'prints one JSON object per query: {"query", "paths", "scores", "weak"}')
    gallery_options(p)
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("serve", help="the web app: caption, hear, explore and search photos in the browser",
                       description="Serve the web page and its JSON API (OpenAPI docs at /docs). The model (and "
                       "the gallery) is loaded once and shared by all requests.")
    p.add_argument("--gallery", metavar="DB", help="a gallery made by `captioner index`: adds similar photos and "
                   "search")
    p.add_argument("--model", help="the model folder (default: the shipped model; must be the gallery's)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this "
                   "machine only). Any other address needs an access token, or --public")
    p.add_argument("--token", help="an access token every API request, photo and thumbnail must carry "
                   "(Authorization: Bearer TOKEN; the page asks for it once). Better in the environment, "
                   "CAPTIONER_TOKEN, where other users of the machine cannot read it from the process list")
    p.add_argument("--public", action="store_true", help="serve a non-loopback --host without a token, on "
                   "purpose: anyone who reaches it sees every gallery photo")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the server answers to besides localhost and --host (e.g. the machine's "
                   "name on the network); repeat for more, '*' for any. Other names are refused, so a web page "
                   "elsewhere cannot reach the server by DNS rebinding")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--max-upload-mb", type=positive_int, default=20, help="largest upload accepted, in MiB "
                   "(default 20)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="photos that may wait to be captioned; "
                   "beyond that a request is answered 503 with Retry-After, so a busy server stays responsive "
                   "(default 64)")
    p.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    try:
        return args.run(args)
    except CaptionerError as e:
        print(f"captioner: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
