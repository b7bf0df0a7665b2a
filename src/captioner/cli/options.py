"""What several commands share: numbers with ranges, Ray's and the gallery's options, how tags are shown."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from ..data.corpus import default_out
from ..errors import CaptionerError

DEFAULT_DATA = str(default_out("flickr8k"))
DEFAULT_DB = "$CAPTIONER_GALLERY, else ~/.local/share/captioner/gallery.db"


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` (to `high`), else a usage error (exit status 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low} to {high}")
        return value
    return parse


positive_int = whole_number(1)
port_number = whole_number(1, 65535)


def positive_number(text: str) -> float:
    """An argparse type: a number above 0 (seconds, say), else a usage error (exit status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help="where the model runs: auto (default: a CUDA "
                   "GPU, else Apple's MPS, else the CPU), cpu, cuda, cuda:N or mps")


def ray_wanted(args: argparse.Namespace) -> bool:
    """Whether to run on Ray (--ray, or a --ray-address); checks first that Ray is installed, and that no --device
    other than the CPU was asked for (Ray's actors run on the CPU)."""
    if not (args.ray or args.ray_address):
        return False
    if args.device not in ("auto", "cpu"):
        raise CaptionerError(f"--ray runs the model on the CPU of each Ray actor: leave out --device {args.device}, "
                             "or leave out --ray to run on it here")
    from ..distributed.cluster import require_ray

    require_ray()
    return True


def ray_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", action="store_true", help=f"{what} on a Ray cluster (pip install 'captioner[ray]'): "
                   "the one in --ray-address or $RAY_ADDRESS, else a local one started for this run; an actor pool "
                   "loads the model once per actor, results come back in input order (see docs/scaling.md)")
    p.add_argument("--ray-address", metavar="ADDRESS", help="the Ray cluster to use, e.g. auto (one started with "
                   "`ray start` on this machine) or ray://head:10001 (implies --ray; default: $RAY_ADDRESS)")
    p.add_argument("--ray-actors", type=positive_int, metavar="N", help="actors of 1 CPU each, running torch with "
                   "1 thread (default: one per CPU of the cluster)")


def gallery_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help=f"the gallery database (default: {DEFAULT_DB})")
    p.add_argument("--model", help="the model folder that indexed the gallery (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def tags_line(tags: list) -> str:
    """A caption's tags (models.tags.Tag) as `captioner caption --tags` and `video --tags` show them."""
    return "  tags: " + (", ".join(f"{t.label} {t.p:.0%}" + (f" ({t.word})" if t.word else "") for t in tags)
                         or "none")
