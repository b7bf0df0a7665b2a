"""`captioner serve`: the web app."""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from ..errors import CaptionerError
from .options import DEFAULT_DB, device_option, port_number, positive_int


def add(sub: argparse._SubParsersAction) -> None:
    """Add the command to the `captioner` parser."""
    p = sub.add_parser("serve", help="the web app: caption, hear, explore and search photos in the browser",
                       description="Serve the web page and its JSON API (OpenAPI docs at /docs). The model (and "
                       "the gallery) is loaded once and shared by all requests.")
    p.add_argument("--db", "--gallery", metavar="DB", help="a gallery made by `captioner index`: adds similar "
                   f"photos and search (default: {DEFAULT_DB}, when it exists; --gallery is the old name)")
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
    p.add_argument("--port", type=port_number, default=8000, help="the port to listen on, 1 to 65535 (default 8000)")
    p.add_argument("--max-upload-mb", type=positive_int, default=20, help="largest upload accepted, in MiB "
                   "(default 20)")
    p.add_argument("--max-queue", type=positive_int, default=64, help="photos that may wait to be captioned; "
                   "beyond that a request is answered 503 with Retry-After, so a busy server stays responsive "
                   "(default 64)")
    device_option(p)
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..web.app import serve

    check_port(args.host, args.port)
    token = args.token or os.environ.get("CAPTIONER_TOKEN") or None
    serve(args.model, served_gallery(args.db), args.host, args.port, args.max_upload_mb * 2**20, args.max_queue,
          token, args.public, args.allowed_host, args.device)
    return 0


def served_gallery(db: str | None) -> Path | None:
    """--db, else the default gallery the other commands use when it exists (serve then says so), else none."""
    from ..gallery import default_db

    if db:
        return Path(db)
    default = default_db()
    if not default.is_file():
        return None
    print(f"captioner: with the gallery {default} (another with --db)", file=sys.stderr)
    return default


def check_port(host: str, port: int) -> None:
    """Fail at once, in one sentence, when the server could not listen on `port` of `host` (taken, or not allowed).

    An address that is not this machine's is left to `serve`, which checks first that it may serve the network.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind(address)
    except socket.gaierror as e:
        raise CaptionerError(f"--host {host} is not a name or address this machine knows ({e.strerror}): give "
                             "an address such as 127.0.0.1 or 0.0.0.0") from None
    except PermissionError:
        raise CaptionerError(f"this user may not listen on port {port}: choose a port above 1023 with --port") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise CaptionerError(f"port {port} on {host} is in use (another server?): stop it, or choose another "
                                 "with --port") from None
