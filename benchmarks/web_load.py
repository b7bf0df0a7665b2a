"""Load on the web app: N clients posting JPEGs to /api/caption for a while; throughput, latency, failures.

    python benchmarks/web_load.py                       # 8 clients, 60 s, the shipped model, examples/*.jpg
    python benchmarks/web_load.py --seconds 5 --photos ../shared/data/flickr8k/Images
    python benchmarks/web_load.py --url http://127.0.0.1:8000   # a server already running

Without --url it starts `captioner.web.app.serve` in a separate process on a
free port of 127.0.0.1 (so the clients do not share its interpreter), waits
for /api/health, warms the model with a few photos, then measures. The goal
in the issue: p95 at most 1 s with 8 clients and no failed request.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def running_server(model: str | None = None, gallery: str | None = None, timeout: float = 120) -> Iterator[str]:
    """`serve` in a child process on a free port; yields its base URL once /api/health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = (f"from captioner.web.app import serve; serve(model={model!r}, gallery={gallery!r}, "
            f"host='127.0.0.1', port={port})")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if child.poll() is not None:
                raise SystemExit(f"the server stopped while starting (exit status {child.returncode})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer within {timeout:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)


def post(http: httpx.Client, photo: Path, data: bytes) -> bool:
    r = http.post("/api/caption", files={"file": (photo.name, data, "image/jpeg")})
    return r.status_code == 200 and bool(r.json().get("caption"))


def load(url: str, photos: list[Path], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """(latencies of the successful requests, failures, elapsed seconds) with `clients` posting in a loop."""
    data = {p: p.read_bytes() for p in photos}
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def client(offset: int) -> None:
        nonlocal failures
        with httpx.Client(base_url=url, timeout=30) as http:
            for photo in itertools.islice(itertools.cycle(photos), offset, None):
                if time.perf_counter() >= stop:
                    return
                t0 = time.perf_counter()
                try:
                    ok = post(http, photo, data[photo])
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        failures += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", help="model folder for the started server (default: the shipped model)")
    parser.add_argument("--gallery", help="gallery for the started server (the caption answers then include "
                        "similar photos)")
    parser.add_argument("--photos", default=str(ROOT / "examples"), help="folder of JPEGs to post (default examples/)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()

    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:500]
    if not photos:
        raise SystemExit(f"no JPEGs in {args.photos}")
    server = contextlib.nullcontext(args.url) if args.url else running_server(args.model, args.gallery)
    with server as url:
        with httpx.Client(base_url=url, timeout=60) as http:  # warm up: first calls load lazily
            for photo in photos[:4]:
                post(http, photo, photo.read_bytes())
        latencies, failures, elapsed = load(url, photos, args.clients, args.seconds)
    ms = np.array(latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"{args.clients} clients for {elapsed:.1f} s posting {len(photos)} JPEGs from {args.photos}")
    print(f"requests: {len(ms)} captioned, {failures} failed")
    print(f"throughput: {len(ms) / elapsed:.2f} captions/s")
    print(f"latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {ms.max() if len(ms) else 0:.0f} ms")
    met = failures == 0 and p95 <= 1000
    print(f"goal (p95 <= 1 s, no failure): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
