"""Time captioning with a loaded model: one photo warm against the encoder alone, a folder, and peak memory.

    python benchmarks/caption_speed.py --photos ../shared/data/flickr8k/Images --count 500

Single-photo latency is the median of --repeats calls of `Captioner.caption([photo])`
on a loaded model (photo decode, encoder, tags, guided beam search, confidence),
each call alternated with the encoder's own forward pass on the same photo's
pixels, so that their ratio is measured side by side, and with its two other
parts: reading the photo into pixels, and `Captioner.describe` on its features
(tags, guided beam search, confidence). Folder throughput is the
median over --runs passes of `Captioner.caption([folder])`. Peak memory is this
process's maximum resident set size.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from captioner import Captioner
from captioner.data.images import load_photo, to_pixels

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "flickr8k" / "Images"),
                        help="a folder of JPEGs to sample from")
    parser.add_argument("--count", type=int, default=500, help="photos in the timed folder")
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--beam", type=int, help="beam width (default: the model's own decoding setting)")
    parser.add_argument("--repeats", type=int, default=30, help="single-photo calls")
    parser.add_argument("--runs", type=int, default=3, help="passes over the folder")
    args = parser.parse_args()

    photos = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    folder = Path(tempfile.mkdtemp(prefix="captioner-speed-"))
    for p in photos:
        shutil.copy(p, folder / p.name)
    started = time.time()
    captioner = Captioner.load(args.model)
    load_seconds = time.time() - started
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    captioner.caption(examples[:1], beam=args.beam)  # warm-up
    size = captioner.encoder.spec.input_size
    pixels = [to_pixels(load_photo(p, size), size)[None] for p in examples]
    features = [captioner.encoder(p) for p in pixels]
    single, encoder, reading, describing = [], [], [], []
    for i in range(args.repeats):
        photo = examples[i % len(examples)]
        t = time.perf_counter()
        captioner.encoder(pixels[i % len(examples)])
        encoder.append(time.perf_counter() - t)
        t = time.perf_counter()
        captioner.caption([photo], beam=args.beam)
        single.append(time.perf_counter() - t)
        t = time.perf_counter()
        to_pixels(load_photo(photo, size), size)
        reading.append(time.perf_counter() - t)
        t = time.perf_counter()
        captioner.describe(*features[i % len(examples)], beam=args.beam)
        describing.append(time.perf_counter() - t)
    throughput = []
    for _ in range(args.runs):
        t = time.perf_counter()
        out = captioner.caption([folder], beam=args.beam)
        throughput.append(len(out) / (time.perf_counter() - t))
    shutil.rmtree(folder)
    decode = captioner.model.decode
    result = {
        "beam": args.beam or decode.beam, "length_penalty": decode.length_penalty, "block_ngram": decode.block_ngram,
        "tag_weight": decode.tag_weight,
        "threads": torch.get_num_threads(), "model_load_s": round(load_seconds, 2),
        "single_photo_ms_median": round(1000 * statistics.median(single), 1),
        "encoder_forward_ms_median": round(1000 * statistics.median(encoder), 1),
        "single_photo_over_encoder": round(statistics.median(single) / statistics.median(encoder), 2),
        "photo_read_ms_median": round(1000 * statistics.median(reading), 1),
        "describe_ms_median": round(1000 * statistics.median(describing), 1),
        "single_photo_ms_all": [round(1000 * s, 1) for s in sorted(single)][::max(1, args.repeats // 10)],
        "folder_photos": len(photos), "folder_photos_per_s_median": round(statistics.median(throughput), 1),
        "folder_photos_per_s_runs": [round(x, 1) for x in throughput],
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
