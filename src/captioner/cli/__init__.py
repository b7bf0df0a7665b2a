"""The `captioner` command: one module per command or group of commands (caption, corpus, training, gallery,
serve, video), assembled here.

Exit status: 0 done, 1 failed work, 2 a usage error (argparse), 130 Ctrl+C. Every error ends in one sentence
on stderr (`main` is the one place that turns exceptions into sentences); `--debug` or CAPTIONER_DEBUG=1 shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import warnings

from ..errors import CaptionerError
from ..version import __version__
from . import caption, corpus, gallery, serve, training, video

EXAMPLES = """\
examples:
  captioner caption photo.jpg holiday/            caption photos with the shipped model
  captioner prepare flickr8k ~/Flickr8k --out data/flickr8k
  captioner prepare img2dataset ~/cc3m-shards --out data/cc  an img2dataset / webdataset corpus
  captioner features --data data/flickr8k         encode every photo once (cached)
  captioner train flickr8k-attention             a shipped config by name (or a path to a TOML file)
  captioner evaluate --model runs/attention/model --split test --beam 3
  captioner index ~/Pictures                      caption and embed a collection into the gallery
  captioner search "a dog catching a frisbee"     find gallery photos by description
  captioner similar photo.jpg -k 5                gallery photos most like this one
  captioner serve                                 the web app on http://127.0.0.1:8000/, with the gallery
  captioner video film.mp4 --vtt film.vtt         a caption for every scene of a video, stream or camera
"""


DEBUG_HELP = "on an error, show the traceback instead of one sentence (also: CAPTIONER_DEBUG=1)"
VERBOSE_HELP = "more messages: debugging detail, and the lines Ray itself prints"
QUIET_HELP = "fewer messages: warnings and errors only, and no progress bars"


COMMANDS = (caption, corpus, training, gallery, serve, video)
"""The modules that add the commands, in the order `captioner --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captioner", description="Describe photos in English sentences; "
                                     "train and evaluate captioners.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    parser.add_argument("-q", "--quiet", action="count", default=0, help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add(sub)
    for command in sub.choices.values():  # also after the command; unset there unless given
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        command.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, help=QUIET_HELP)
    return parser


class _Bars(logging.Handler):
    """Log records on stderr through tqdm, so that they never tear a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def configure_logging(verbose: int, quiet: int) -> None:
    """captioner's messages on stderr: its progress and notes (INFO) by default, warnings only with -q, debugging
    detail with -v; Ray's own lines only with -v."""
    handler = _Bars()
    handler.setFormatter(logging.Formatter("%(message)s" if verbose < 1 else "%(name)s: %(message)s"))
    root = logging.getLogger("captioner")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logging.getLogger("ray").setLevel(logging.INFO if verbose else logging.ERROR)  # read by distributed.cluster


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (`captioner ... | head -1`), rather than another pipe broken."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll (Windows), or a stdout that is no file
        return False


def sentence(error: Exception, command: str) -> str:
    """What went wrong, in one sentence naming the thing and the fix."""
    if isinstance(error, CaptionerError):
        return str(error)
    if isinstance(error, OSError) and error.filename:
        why = (error.strerror or str(error)).lower()
        return f"cannot use {error.filename} ({why}): check the path and that you may read or write there"
    what = (str(error).strip().splitlines() or [""])[0]
    return (f"captioner {command} failed unexpectedly: {what} ({type(error).__name__}); run with --debug for the "
            "traceback")


def report(error: Exception, command: str) -> int:
    """Say what went wrong on stderr, in one sentence, and return the exit status of failed work."""
    if isinstance(error, BrokenPipeError) and stdout_gone():  # `| head -1` has read enough: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and let exiting flush into nothing
    else:
        print(f"captioner: error: {sentence(error, command)}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status: 0 done, 1 failed work, 130 Ctrl+C (usage errors exit 2 early)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    warnings.simplefilter("ignore", FutureWarning)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug or os.environ.get("CAPTIONER_DEBUG", "") not in ("", "0"):
            raise
        return report(e, args.command)
