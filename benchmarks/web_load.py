"""Load on the web app: N clients posting JPEGs to /api/caption for a while; throughput, latency, refusals, failures.

    python benchmarks/web_load.py                       # 8 clients, 60 s, the shipped model, examples/*.jpg
    python benchmarks/web_load.py --clients 32          # the goal: no failure, p95 at most 2 s
    python benchmarks/web_load.py --clients 64 --max-queue 16   # overload: only 200s and 503s
    python benchmarks/web_load.py --seconds 5 --photos ../shared/data/flickr8k/Images
    python benchmarks/web_load.py --url http://127.0.0.1:8000   # a server already running

Without --url it starts `captioner.web.app.serve` in a separate process on a
free port of 127.0.0.1 (so the clients do not share its interpreter), waits
for /api/health, warms the model with a few photos, then measures, sampling
the server's resident memory (RSS) every 0.2 s. A 503 (the queue is full) is a
refusal, not a failure: that client waits the Retry-After seconds the server
asks for, as a polite client does. Anything else that is not a caption (another
status, a timeout) is a failure. After the load, every photo is posted once
more: the server must answer them all normally.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def running_server(model: str | None = None, gallery: str | None = None, max_queue: int | None = None,
                   timeout: float = 120) -> Iterator[tuple[str, int]]:
    """`serve` in a child process on a free port; yields its base URL and pid once /api/health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = f", max_queue={max_queue}" if max_queue else ""
    code = (f"from captioner.web.app import serve; serve(model={model!r}, gallery={gallery!r}, "
            f"host='127.0.0.1', port={port}{queue})")
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
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(timeout=30)


def post(http: httpx.Client, photo: Path, data: bytes) -> tuple[str, float]:
    """("ok", 0), ("refused", seconds to wait) for a 503, or ("failed", 0) for anything else."""
    try:
        r = http.post("/api/caption", files={"file": (photo.name, data, "image/jpeg")})
    except httpx.HTTPError:
        return "failed", 0.0
    if r.status_code == 503 and "Retry-After" in r.headers:
        return "refused", float(r.headers["Retry-After"])
    return ("ok" if r.status_code == 200 and r.json().get("caption") else "failed"), 0.0


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)  # seconds, of the captioned requests
    refused: int = 0
    failed: int = 0
    seconds: float = 0.0
    peak_rss: int = 0  # bytes, of the server when it runs in a child process


def rss(pid: int) -> int:
    """Resident memory of a process in bytes (0 if it cannot be read)."""
    with contextlib.suppress(OSError, StopIteration):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) * 1024
    return 0


def load(url: str, photos: list[Path], clients: int, seconds: float, pid: int | None = None) -> Load:
    """`clients` posting `photos` in a loop for `seconds`; the server's peak RSS sampled if its `pid` is given."""
    data = {p: p.read_bytes() for p in photos}
    result = Load()
    lock = threading.Lock()
    start = time.perf_counter()
    stop = start + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            for photo in itertools.islice(itertools.cycle(photos), offset, None):
                if time.perf_counter() >= stop:
                    return
                t0 = time.perf_counter()
                outcome, wait = post(http, photo, data[photo])
                took = time.perf_counter() - t0
                with lock:
                    if outcome == "ok":
                        result.latencies.append(took)
                    elif outcome == "refused":
                        result.refused += 1
                    else:
                        result.failed += 1
                time.sleep(min(wait, max(0.0, stop - time.perf_counter())))

    def sample() -> None:
        while time.perf_counter() < stop:
            result.peak_rss = max(result.peak_rss, rss(pid))
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if pid is not None:
        threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - start
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--model", help="model folder for the started server (default: the shipped model)")
    parser.add_argument("--gallery", help="gallery for the started server (the caption answers then include "
                        "similar photos)")
    parser.add_argument("--photos", default=str(ROOT / "examples"), help="folder of JPEGs to post (default examples/)")
    parser.add_argument("--max-queue", type=int, help="queue bound of the started server (default: serve's)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--p95", type=float, default=2000, help="goal: p95 latency of the captioned requests, ms")
    parser.add_argument("--max-rss-mb", type=float, default=2048, help="goal: the server's peak RSS, MB")
    args = parser.parse_args()

    photos = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:500]
    if not photos:
        raise SystemExit(f"no JPEGs in {args.photos}")
    server = (contextlib.nullcontext((args.url, None)) if args.url
              else running_server(args.model, args.gallery, args.max_queue))
    with server as (url, pid):
        with httpx.Client(base_url=url, timeout=60) as http:  # warm up: first calls load lazily
            for photo in photos[:4]:
                post(http, photo, photo.read_bytes())
        result = load(url, photos, args.clients, args.seconds, pid)
        with httpx.Client(base_url=url, timeout=60) as http:  # after the load: normal answers again
            after = [post(http, photo, photo.read_bytes())[0] for photo in photos[:20]]
    ms = np.array(result.latencies) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"{args.clients} clients for {result.seconds:.1f} s posting {len(photos)} JPEGs from {args.photos}")
    print(f"requests: {len(ms)} captioned, {result.refused} refused (503, queue full), {result.failed} failed")
    print(f"throughput: {len(ms) / result.seconds:.2f} captions/s")
    print(f"latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms, max {ms.max() if len(ms) else 0:.0f} ms")
    if pid is not None:
        print(f"server peak RSS: {result.peak_rss / 2**20:.0f} MB")
    print(f"after the load: {after.count('ok')} of {len(after)} photos captioned")
    met = (result.failed == 0 and p95 <= args.p95 and result.peak_rss <= args.max_rss_mb * 2**20
           and after.count("ok") == len(after))
    print(f"goal (no failure, p95 <= {args.p95:.0f} ms, peak RSS <= {args.max_rss_mb:.0f} MB, normal answers "
          f"after): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
