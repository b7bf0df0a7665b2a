"""Captioning throughput on this machine, locally and through Ray, side by side in one run.

    python benchmarks/ray_scaling.py --photos ../shared/data/flickr8k/Images --count 2000 --runs 2

The local path is `captioner caption`'s: one process, the model loaded once,
torch on every core (--threads, default all). The Ray path is `captioner caption
--ray`'s: a local Ray instance of --actors CPUs and an actor pool of --actors
actors with 1 CPU and 1 torch thread each. The passes alternate (local, Ray,
local, Ray, ...) so both see the same machine. Each Ray pass starts a fresh
actor pool, which loads the model in every actor: its start-up (until the first
caption arrives) is reported separately from its throughput (photos after the
first batch over the time after it), beside the end-to-end rate. Ray's own
start (`ray.init`) is timed once. Medians over the runs; the ratio is Ray's
throughput over the local one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from captioner import Captioner
from captioner.distributed.batch import caption_stream

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "flickr8k" / "Images"),
                        help="a folder of JPEGs to take photos from (sorted by name)")
    parser.add_argument("--count", type=int, default=2000, help="photos captioned per pass")
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors of 1 CPU each (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the local path")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per batch, both paths (default 16)")
    parser.add_argument("--runs", type=int, default=2, help="passes of each path, alternated")
    args = parser.parse_args()

    import ray

    photos = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    started = time.perf_counter()
    ray.init(num_cpus=args.actors, include_dashboard=False, logging_level="WARNING")
    ray_init_s = time.perf_counter() - started
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    captioner = Captioner.load(args.model)
    load_s = time.perf_counter() - started
    remote = caption_stream(args.model, actors=args.actors)
    local_rate, ray_rate, ray_end_to_end, ray_startup = [], [], [], []
    for run in range(args.runs):
        started = time.perf_counter()
        here = [c.text for c in captioner.stream(photos, batch_size=args.batch_size)]
        local_rate.append(len(photos) / (time.perf_counter() - started))
        started = time.perf_counter()
        there, first = [], None
        for c in remote(photos, batch_size=args.batch_size):
            if first is None:
                first = time.perf_counter()
            there.append(c.text)
        done = time.perf_counter()
        ray_startup.append(first - started)
        ray_rate.append((len(photos) - args.batch_size) / (done - first))
        ray_end_to_end.append(len(photos) / (done - started))
        same = sum(a == b for a, b in zip(here, there))
        print(f"run {run + 1}: local {local_rate[-1]:.2f} photos/s; Ray {ray_rate[-1]:.2f} photos/s after a start-up "
              f"of {ray_startup[-1]:.1f} s ({ray_end_to_end[-1]:.2f} photos/s end to end); "
              f"{same}/{len(photos)} captions the same", flush=True)
    median = statistics.median
    print(json.dumps({
        "photos": len(photos), "batch_size": args.batch_size, "runs": args.runs,
        "local_threads": args.threads, "ray_actors": args.actors, "model_load_s": round(load_s, 2),
        "ray_init_s": round(ray_init_s, 2),
        "local_photos_per_s_median": round(median(local_rate), 2),
        "ray_photos_per_s_median": round(median(ray_rate), 2),
        "ray_startup_s_median": round(median(ray_startup), 2),
        "ray_end_to_end_photos_per_s_median": round(median(ray_end_to_end), 2),
        "ray_over_local": round(median(ray_rate) / median(local_rate), 3),
        "ray_end_to_end_over_local": round(median(ray_end_to_end) / median(local_rate), 3),
        "per_actor_photos_per_s": round(median(ray_rate) / args.actors, 2),
    }, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
