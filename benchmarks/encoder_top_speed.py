"""The encoder's cost per photo with a fine-tuned top beside its own, against the frozen encoder, side by side.

    python benchmarks/encoder_top_speed.py --top 1 --top 2 --threads 2

A model with a fine-tuned top runs the encoder's bottom once, then its own top (for the tags, the confidence
and search) and the fine-tuned one (for the decoder): one more pass through the last K blocks and the head.
For each K this times the frozen encoder and that encoder (the tuned top holding the shipped weights: the
same work) alternately on the same pixels, one photo a call and a folder's chunk of 8 (features.cache's
ENCODER_CHUNK), and prints the medians and their ratio, in wall-clock time and in this process's CPU time (on a
shared machine the CPU time is the steadier of the two); and the ratio of their convolutions' multiply-adds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from captioner.data.images import load_photo, to_pixels
from captioner.features.cache import ENCODER_CHUNK
from captioner.models.encoders import load_encoder
from captioner.models.encoders.base import with_tuned_top

ROOT = Path(__file__).resolve().parents[1]


def timed(encoder, pixels: np.ndarray) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    encoder(pixels)
    return time.perf_counter() - wall, time.process_time() - cpu


def multiply_adds(encoder, pixels: np.ndarray) -> int:
    """The multiply-adds of every convolution the encoder runs on `pixels` (the rest is small beside them)."""
    total = 0

    def count(conv: torch.nn.Conv2d, _, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

    hooks = [m.register_forward_hook(count) for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    encoder(pixels)
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="efficientnet-lite2")
    parser.add_argument("--top", type=int, action="append", required=True, help="blocks in the top (repeatable)")
    parser.add_argument("--repeats", type=int, default=40, help="alternated calls of each, per batch size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    whole = load_encoder(args.encoder, device="cpu")
    size = whole.spec.input_size
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    pixels = np.stack([to_pixels(load_photo(p, size), size) for p in examples])
    chunk = np.concatenate([pixels] * (-(-ENCODER_CHUNK // len(pixels))))[:ENCODER_CHUNK]
    result = {"encoder": args.encoder, "threads": args.threads, "repeats": args.repeats}
    for top in args.top:
        bottom = load_encoder(args.encoder, size, "cpu", top)
        tuned = with_tuned_top(bottom, bottom.top.state_dict())
        result[f"top {top}, multiply-adds ratio"] = round(multiply_adds(tuned, pixels[:1])
                                                         / multiply_adds(whole, pixels[:1]), 3)
        for name, batch in (("one photo", pixels[:1]), (f"{ENCODER_CHUNK} photos", chunk)):
            frozen, both = [], []
            timed(whole, batch), timed(tuned, batch)  # warm-up
            for _ in range(args.repeats):
                frozen.append(timed(whole, batch))
                both.append(timed(tuned, batch))
            row = {}
            for i, clock in enumerate(("wall", "cpu")):
                f, b = statistics.median(t[i] for t in frozen), statistics.median(t[i] for t in both)
                row |= {f"{clock}_frozen_ms": round(1000 * f, 1), f"{clock}_with_tuned_top_ms": round(1000 * b, 1),
                        f"{clock}_ratio": round(b / f, 3)}
            result[f"top {top}, {name}"] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
