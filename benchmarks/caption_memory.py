"""Peak memory of `captioner caption` over a folder, run after run.

    python benchmarks/caption_memory.py --count 1000 --runs 10

Copies --count JPEGs into a temporary folder, then runs `captioner caption
FOLDER --json` --runs times, each as its own process with its output thrown
away, and prints each run's peak resident memory (the kernel's maximum RSS of
that process, from wait4) and wall time. The goal: every run at most
--limit-mb (1.5 GB).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one run of `cmd`; exits if it fails."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss is in KB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "flickr8k" / "Images"),
                        help="a folder of JPEGs to take photos from (sorted by name)")
    parser.add_argument("--count", type=int, default=1000, help="photos captioned per run")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--limit-mb", type=float, default=1536, help="goal: every run's peak RSS at most this")
    args = parser.parse_args()

    photos = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    if not photos:
        raise SystemExit(f"no JPEGs in {args.photos}")
    cmd = [sys.executable, "-m", "captioner.cli", "caption", "--json"] + (["--model", args.model] if args.model else [])
    peaks = []
    with tempfile.TemporaryDirectory(prefix="captioner-memory-") as folder:
        for p in photos:
            shutil.copy(p, Path(folder) / p.name)
        for run in range(1, args.runs + 1):
            mb, seconds = peak_rss_mb(cmd + [folder])
            peaks.append(mb)
            print(f"run {run}: peak RSS {mb:.0f} MB, {seconds:.1f} s", flush=True)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"{len(photos)} photos, {args.runs} runs: peak RSS min {min(peaks):.0f} MB, "
          f"median {sorted(peaks)[len(peaks) // 2]:.0f} MB, max {max(peaks):.0f} MB")
    met = max(peaks) <= args.limit_mb
    print(f"goal (every run <= {args.limit_mb:.0f} MB): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
