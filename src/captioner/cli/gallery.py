"""`captioner index`, `similar` and `search`: the gallery."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CaptionerError
from .options import device_option, gallery_options, positive_int, positive_number, ray_options, ray_wanted


def add(sub: argparse._SubParsersAction) -> None:
    """Add the commands to the `captioner` parser."""
    p = sub.add_parser("index", help="caption and embed photos and videos into a gallery (incremental)",
                       description="Caption and embed every photo and video under the given folders into a "
                       "gallery; each scene of a video (mp4, mkv, webm, mov, avi, ...) is an item of its own, found "
                       "by search and similar with its start and end. A second run only touches new, changed and "
                       "removed files (a moved file is found again by its content; an unchanged video is not "
                       "decoded again); an interrupted run resumes. Files that fail are recorded and listed at the "
                       "end (a video that breaks partway keeps the scenes before the break). Videos need the "
                       "[video] extra; without it they are skipped, with a word. Exit status: 0 when every file was "
                       "indexed (or skipped), 1 when any failed.")
    p.add_argument("paths", nargs="+", metavar="PHOTOS", help="photo and video files, or folders")
    gallery_options(p)
    device_option(p)
    p.add_argument("--rebuild", action="store_true", help="forget the gallery's photos and index them again "
                   "(after changing the model)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="photos encoded together (default 16)")
    p.add_argument("--every", type=positive_number, default=1.0, metavar="SECONDS",
                   help="a video frame sampled every SECONDS to find its scenes (default 1)")
    ray_options(p, "caption and embed the photos (this process still writes the gallery; videos are read here)")
    p.set_defaults(run=cmd_index)

    p = sub.add_parser("similar", help="gallery photos and scenes most like a photo or a scene",
                       description="Gallery photos and video scenes most like PHOTO (which need not be in the "
                       "gallery), or like a scene of a video the gallery holds (VIDEO --at SECONDS), by image "
                       "vectors, caption vectors or a blend of both.")
    p.add_argument("photo", metavar="PHOTO", help="a photo file, or a video file in the gallery (see --at)")
    p.add_argument("--at", type=float, metavar="SECONDS", help="with a video: the scene playing at SECONDS "
                   "(default: its first scene)")
    p.add_argument("-k", type=positive_int, default=8, help="how many photos (default 8)")
    p.add_argument("--by", choices=["both", "visual", "caption"], default="both",
                   help="visual: what the photos look like; caption: what their captions say; both (default)")
    gallery_options(p)
    device_option(p)
    p.set_defaults(run=cmd_similar)

    p = sub.add_parser("search", help="gallery photos that match a description",
                       description="Gallery photos that match a description: its text vector against each "
                       "photo's caption vector and image vector in the model's photo-text embedding (`captioner "
                       "align`). A photo whose tags (what the encoder's classifier recognised, shown after each "
                       "result) name a word of the description ranks higher. Each result says which part counted "
                       "most (caption, photo or tags) and, when it scores below what only the worst 5% of dev "
                       "captions score with their own photo, that it is weak; --json gives every part (why).")
    asked = p.add_mutually_exclusive_group(required=True)
    asked.add_argument("text", nargs="?", metavar="TEXT", help="the description")
    asked.add_argument("--queries", metavar="FILE", help="one description per line, answered in one process; "
                       'prints one JSON object per query: {"query", "paths", "scores", "weak"}')
    p.add_argument("-k", type=positive_int, default=8, help="how many photos (default 8)")
    p.add_argument("--rerank", action="store_true", help="re-rank the best candidates by how likely the "
                   "captioner finds TEXT as their caption (slower, usually better)")
    gallery_options(p)
    device_option(p)
    p.set_defaults(run=cmd_search)


def cmd_index(args: argparse.Namespace) -> int:
    from ..gallery import Gallery

    stream = None
    if ray_wanted(args):
        from ..distributed.batch import caption_stream

        stream = caption_stream(args.model, args.ray_actors, args.ray_address, search=True)
    gallery = Gallery.create(args.db, model=args.model, rebuild=args.rebuild, device=args.device)
    try:
        report = gallery.index(args.paths, progress=not args.quiet, batch_size=args.batch_size, stream=stream,
                               every=args.every)
    finally:
        gallery.close()
    if report.skipped:
        from ..gallery.indexer import video_extra_missing

        print(f"captioner: {len(report.skipped)} videos skipped: {video_extra_missing()}", file=sys.stderr)
    for path, reason in report.failed.items():
        print(json.dumps({"path": path, "error": reason}, ensure_ascii=False) if args.json
              else f"captioner: {reason}", file=sys.stdout if args.json else sys.stderr)
    print(json.dumps({"db": str(gallery.db)} | {k: v for k, v in vars(report).items() if k != "failed"})
          if args.json else f"{gallery.db}: {report.summary()}")
    return 1 if report.failed else 0

def cmd_similar(args: argparse.Namespace) -> int:
    from ..data.images import is_video
    from ..gallery import Gallery

    with Gallery.open(args.db, model=args.model, device=args.device) as gallery:
        query = args.photo
        if args.at is not None or is_video(args.photo):
            scene = gallery.scene(args.photo, args.at or 0.0)
            if scene is None:
                raise CaptionerError(f"the gallery has no scenes of {args.photo}: index it first (captioner index "
                                     f"{args.photo} --db {gallery.db})")
            query = scene.id
        _print_matches(gallery.similar(query, args.k, args.by), args.json)
    return 0

def cmd_search(args: argparse.Namespace) -> int:
    from ..gallery import Gallery

    queries = read_queries(args.queries) if args.queries is not None else None
    with Gallery.open(args.db, model=args.model, device=args.device) as gallery:
        if queries is None:
            _print_matches(gallery.search(args.text, args.k, args.rerank), args.json)
            return 0
        for query in queries:
            found = gallery.search(query, args.k, args.rerank)
            print(json.dumps({"query": query, "paths": [str(m.path) for m in found],
                              "scores": [round(m.score, 4) for m in found],
                              "weak": [m.weak for m in found]}, ensure_ascii=False), flush=True)
    return 0


def _print_matches(matches, as_json: bool) -> None:
    if not as_json and matches and all(m.weak for m in matches):
        print("captioner: nothing in the gallery matches this well; the closest photos:", file=sys.stderr)
    for rank, m in enumerate(matches, 1):
        tags = ", ".join(f"{t['word'] or t['label']} {t['p']:.2f}" for t in m.tags)
        print(json.dumps({"rank": rank} | m.to_json(), ensure_ascii=False) if as_json
              else f"{m.score:6.3f}  {m.where}  {m.caption}" + (f"  [{tags}]" if tags else "")
              + (f"  (by {m.matched_by}{', weak' if m.weak else ''})" if m.why else ""), flush=True)


def read_queries(path: str) -> list[str]:
    """The descriptions in a --queries file, one a line (blank lines skipped), read before the gallery is opened."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise CaptionerError(f"cannot read the --queries file {path} ({why}): give a text file with one "
                             "description per line") from None
    return [query for query in (line.strip() for line in text.splitlines()) if query]
