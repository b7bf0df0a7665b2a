"""How fast `captioner video` runs: a 10-minute 1280x720 H.264 video at --every 1, against real time.

    python benchmarks/video_speed.py --runs 5

Makes the video once (Flickr8k photos, 3-7 s each with a slow zoom or pan, cuts and dissolves, a fixed grain so
that its bit rate is a real video's; x264's default settings: a keyframe every 250 frames or at a cut, three
B-frames) and a 2-second one of the same kind, or reuses them from --work. Each run times the real command in a
new process, `captioner video VIDEO --json`, on the short video (start-up: imports, the model, opening a video)
and then on the long one; the speed is the long video's length over its time less the start-up, and the peak
memory is the larger process's maximum resident set; the CPU seconds (user and system, all threads) say how much
work it is whatever else the machine runs. Runs alternate; medians are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from make_videos import FLICKR8K, make_video, plan

ROOT = Path(__file__).resolve().parents[1]


def made(path: Path, seconds: float, seed: int) -> Path:
    """A 1280x720 25 fps H.264 video of about `seconds` of Flickr8k photos at `path`, made unless it exists."""
    if path.exists() and path.with_suffix(".json").exists():
        return path
    names = sorted((FLICKR8K / "Images").glob("*.jpg"))
    rng = random.Random(seed)
    chosen = rng.sample(names, max(1, round(seconds / 5)) + 1)
    shots, changes = plan([p.name for p in chosen], rng)
    while len(shots) > 1 and shots[-1].start >= seconds:
        shots, changes = shots[:-1], changes[:-1]
    shots[-1].end = seconds
    make_video([Image.open(p) for p in chosen[:len(shots)]], path, shots, changes, (1280, 720), 25, grain=16.0,
               seed=seed, options={"preset": "fast"})
    return path


def timed(video: Path) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak resident MB, scenes) of `captioner video VIDEO --json` in a new
    process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "captioner", "video", str(video), "--json"],
                                stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak memory
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise SystemExit(f"captioner video failed: {err.read()}")
        return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, len(out.read().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/captioner-video-speed", help="where the videos are made")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    long = made(work / f"long-{args.minutes:g}min-720p.mp4", 60 * args.minutes, seed=7)
    short = made(work / "short-2s-720p.mp4", 2.0, seed=8)
    duration = json.loads(long.with_suffix(".json").read_text())["duration"]
    runs = []
    for _ in range(args.runs):
        load = os.getloadavg()[0]
        start_up, start_cpu, start_mb, _ = timed(short)
        whole, cpu, peak_mb, count = timed(long)
        runs.append({"load_average": round(load, 2), "start_up_s": round(start_up, 2), "video_s": round(whole, 1),
                     "cpu_s": round(cpu, 1), "cpu_s_less_start_up": round(cpu - start_cpu, 1),
                     "x_real_time": round(duration / (whole - start_up), 1),
                     "x_real_time_with_start_up": round(duration / whole, 1), "peak_mb": round(max(peak_mb, start_mb)),
                     "scenes": count})
        print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"video": long.name, "duration_s": duration, "size_mb": round(long.stat().st_size / 2**20, 1),
                      "bit_rate_mbps": round(8 * long.stat().st_size / duration / 1e6, 2), "runs": len(runs),
                      **{f"median_{k}": statistics.median(r[k] for r in runs)
                         for k in ("start_up_s", "video_s", "cpu_s_less_start_up", "x_real_time",
                                   "x_real_time_with_start_up", "peak_mb")}},
                     indent=1))


if __name__ == "__main__":
    main()
