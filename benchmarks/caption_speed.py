"""Time captioning with a loaded model: one photo warm against the encoder alone, a folder, and peak memory.

    python benchmarks/caption_speed.py --photos ../shared/data/flickr8k/Images --count 500

    python benchmarks/caption_speed.py --model NEW_MODEL --against OLD_MODEL   # side by side

Single-photo latency is the median of --repeats calls of `Captioner.caption([photo])`
on a loaded model (photo decode, encoder, tags, guided beam search, confidence),
each call alternated with the encoder's own forward pass on the same photo's
pixels, so that their ratio is measured side by side, and with its two other
parts: reading the photo into pixels, and `Captioner.describe` on its features
(tags, guided beam search, confidence). Folder throughput is the
median over --runs passes of `Captioner.caption([folder])`. Peak memory is this
process's maximum resident set size. With --against, the two models' calls and
passes alternate, so that the ratios compare them under the same load.
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
    parser.add_argument("--against", metavar="MODEL", help="another model folder (say, the one this model replaces) "
                        "timed side by side: each single-photo call and folder pass alternates between the two, "
                        "and the ratios this/other are printed")
    args = parser.parse_args()

    photos = sorted(Path(args.photos).glob("*.jpg"))[:args.count]
    folder = Path(tempfile.mkdtemp(prefix="captioner-speed-"))
    for p in photos:
        shutil.copy(p, folder / p.name)
    examples = sorted((ROOT / "examples").glob("*.jpg"))
    runs = [Timed("model", args.model, args.beam, examples)]
    if args.against:
        runs.append(Timed("against", args.against, args.beam, examples))
    for i in range(args.repeats):
        for run in runs:
            run.single_photo(i)
    for _ in range(args.runs):
        for run in runs:
            run.folder(folder)
    shutil.rmtree(folder)
    result = {run.name: run.result(len(photos)) for run in runs}
    if args.against:
        this, other = result["model"], result["against"]
        result["model_over_against"] = {
            "single_photo": round(this["single_photo_ms_median"] / other["single_photo_ms_median"], 3),
            "encoder_forward": round(this["encoder_forward_ms_median"] / other["encoder_forward_ms_median"], 3),
            "folder_time": round(other["folder_photos_per_s_median"] / this["folder_photos_per_s_median"], 3)}
    # The process's maximum resident set size: with --against, both models are loaded.
    result["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result, indent=2))


class Timed:
    """One model's timings: single-photo calls beside the encoder's forward pass, and folder passes."""

    def __init__(self, name: str, model: str | None, beam: int | None, examples: list[Path]):
        self.name, self.beam, self.examples = name, beam, examples
        started = time.time()
        self.captioner = Captioner.load(model)
        self.load_seconds = time.time() - started
        self.captioner.caption(examples[:1], beam=beam)  # warm-up
        self.size = self.captioner.encoder.spec.input_size
        self.pixels = [to_pixels(load_photo(p, self.size), self.size)[None] for p in examples]
        self.features = [self.captioner.encoder(p) for p in self.pixels]
        self.single, self.encoder, self.reading, self.describing, self.throughput = [], [], [], [], []

    def single_photo(self, i: int) -> None:
        k = i % len(self.examples)
        t = time.perf_counter()
        self.captioner.encoder(self.pixels[k])
        self.encoder.append(time.perf_counter() - t)
        t = time.perf_counter()
        self.captioner.caption([self.examples[k]], beam=self.beam)
        self.single.append(time.perf_counter() - t)
        t = time.perf_counter()
        to_pixels(load_photo(self.examples[k], self.size), self.size)
        self.reading.append(time.perf_counter() - t)
        t = time.perf_counter()
        self.captioner.describe(*self.features[k], beam=self.beam)
        self.describing.append(time.perf_counter() - t)

    def folder(self, folder: Path) -> None:
        t = time.perf_counter()
        out = self.captioner.caption([folder], beam=self.beam)
        self.throughput.append(len(out) / (time.perf_counter() - t))

    def result(self, photos: int) -> dict:
        decode, median = self.captioner.model.decode, statistics.median
        return {
            "beam": self.beam or decode.beam, "length_penalty": decode.length_penalty,
            "block_ngram": decode.block_ngram, "tag_weight": decode.tag_weight,
            "encoder_top": self.captioner.model.top_blocks,
            "threads": torch.get_num_threads(), "model_load_s": round(self.load_seconds, 2),
            "single_photo_ms_median": round(1000 * median(self.single), 1),
            "encoder_forward_ms_median": round(1000 * median(self.encoder), 1),
            "single_photo_over_encoder": round(median(self.single) / median(self.encoder), 2),
            "photo_read_ms_median": round(1000 * median(self.reading), 1),
            "describe_ms_median": round(1000 * median(self.describing), 1),
            "single_photo_ms_all": [round(1000 * s, 1) for s in sorted(self.single)][::max(1, len(self.single) // 10)],
            "folder_photos": photos, "folder_photos_per_s_median": round(median(self.throughput), 1),
            "folder_photos_per_s_runs": [round(x, 1) for x in self.throughput],
        }


if __name__ == "__main__":
    main()
