"""The feature cache: each photo encoded once per encoder, stored as float16 safetensors shards.

Features are keyed by (encoder key, sha256 of the photo's bytes), so a changed
photo or a changed encoder never reuses stale features. Shards are written
whole and atomically, and `index.json` (rewritten atomically after each shard)
records each shard's checksum: an interrupted run keeps every finished shard and
resumes after it; a partial or corrupt shard is detected and recomputed.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from ..data.images import TruncatedPhotoWarning, file_sha256, read_photo, to_pixels
from ..errors import CaptionerError
from ..files import atomic_path, write_atomic
from ..models.encoders.base import Encoder, Features

INDEX = "index.json"
log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class FeatureCache:
    """The cached features of one encoder in `root / encoder_key`."""

    root: Path
    encoder_key: str
    shards: list[dict] = field(default_factory=list)  # {"file", "sha256", "count"}
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # photo sha256 -> (shard, row)

    @property
    def folder(self) -> Path:
        return self.root / self.encoder_key

    @classmethod
    def open(cls, root: str | Path, encoder_key: str, verify: bool = True) -> "FeatureCache":
        """The cache as the index records it; with `verify`, shards whose bytes changed are dropped."""
        cache = cls(Path(root), encoder_key)
        index_path = cache.folder / INDEX
        if not index_path.exists():
            return cache
        try:
            index = json.loads(index_path.read_text())
            shards = index["shards"]
            if (index["format"] != FORMAT or index["encoder"] != encoder_key or not isinstance(shards, list)
                    or not all(isinstance(s["file"], str) and isinstance(s["sha256"], str)
                               and isinstance(s["count"], int) and isinstance(s["hashes"], list)
                               for s in shards)):
                raise ValueError("not a feature index")
        except (ValueError, KeyError, TypeError):  # damaged, or JSON of another shape
            raise CaptionerError(f"{index_path} is not a captioner feature index: delete {cache.folder} "
                                 "and run again") from None
        for shard in shards:
            path = cache.folder / shard["file"]
            if verify and (not path.exists() or file_sha256(path) != shard["sha256"]):
                log.warning(f"feature shard {path} is missing or corrupt: its {shard['count']} photos will be "
                            "encoded again")
                continue
            cache._add_shard(shard)
        return cache

    def _add_shard(self, shard: dict) -> None:
        n = len(self.shards)
        self.shards.append(shard)
        for row, photo_hash in enumerate(shard["hashes"]):
            self.rows[photo_hash] = (n, row)

    def __contains__(self, photo_hash: str) -> bool:
        return photo_hash in self.rows

    def add(self, hashes: list[str], pooled: np.ndarray, grid: np.ndarray) -> None:
        """Store one shard of features (pooled [n, D], grid [n, N, D]) and record it in the index."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{len(self.shards):05d}-{hashes[0][:8]}.safetensors"
        path = self.folder / name
        with atomic_path(path) as tmp:
            save_file({"pooled": pooled.astype(np.float16), "grid": grid.astype(np.float16)}, str(tmp))
        self._add_shard({"file": name, "sha256": file_sha256(path), "count": len(hashes), "hashes": hashes})
        index = {"format": FORMAT, "encoder": self.encoder_key, "shards": self.shards}
        write_atomic(self.folder / INDEX, json.dumps(index))

    def load(self, hashes: Sequence[str], grid_of: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the given photos, in order: pooled [n, D] and grid [n, N, D], float16.

        With `grid_of`, only photo i with grid_of[i] gets its grid read; the others' stay zeros
        (memory the system never hands out until written: a training worker holds only its shard).
        """
        missing = [h for h in hashes if h not in self.rows]
        if missing:
            raise CaptionerError(f"{len(missing)} photos have no features in {self.folder}: run `captioner "
                                 "features` first")
        by_shard: dict[int, list[int]] = {}
        for i, h in enumerate(hashes):
            by_shard.setdefault(self.rows[h][0], []).append(i)
        pooled = grid = None
        for s, positions in by_shard.items():
            tensors = load_file(str(self.folder / self.shards[s]["file"]))
            rows = [self.rows[hashes[i]][1] for i in positions]
            if pooled is None:
                pooled = np.empty((len(hashes), *tensors["pooled"].shape[1:]), np.float16)
                grid = (np.empty if grid_of is None else np.zeros)((len(hashes), *tensors["grid"].shape[1:]),
                                                                   np.float16)
            pooled[positions] = tensors["pooled"][rows]
            if grid_of is not None:
                positions, rows = ([i for i in positions if grid_of[i]],
                                   [r for i, r in zip(positions, rows) if grid_of[i]])
            grid[positions] = tensors["grid"][rows]
        return torch.from_numpy(pooled), torch.from_numpy(grid)


class Batch(NamedTuple):
    """One batch of encoded photos: positions index the paths given to `encode_photos`."""

    ok: list[int]  # the positions of the photos encoded, in order
    pooled: torch.Tensor  # [len(ok), D]
    grid: torch.Tensor  # [len(ok), N, D]
    errors: dict[int, str]  # position -> why that photo could not be read
    warnings: dict[int, str]  # position -> the warning that came with that photo (a truncated file)
    tuned: tuple[torch.Tensor, torch.Tensor] | None = None  # a model's fine-tuned top's features (Features.tuned)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def hash_photos(paths: Sequence[Path], workers: int = 2,
                failed: dict[Path, str] | None = None) -> list[str | None]:
    """sha256 of each photo's bytes (the cache key), read in parallel.

    A photo that cannot be read raises PhotoError, or with `failed` gets None and
    its one-sentence reason is recorded there, so the other photos still count.
    """
    def one(path: Path) -> str | None:
        try:
            return file_sha256(path)
        except CaptionerError as e:
            if failed is None:
                raise
            failed[path] = str(e)
            return None

    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(one, paths), total=len(paths), desc="hashing", unit="photo",
                         disable=len(paths) < 500, leave=False))


ENCODER_CHUNK = 8
"""Photos per pass through the encoder. Each photo is encoded on its own, so chunks give exactly the features
of one pass over the whole batch; but a pass over 16 photos at 224 px allocates activations of tens of MB each,
which glibc's heap keeps and fragments: `benchmarks/caption_speed.py` peaked anywhere from 0.6 to 1.8 GB run
to run. In chunks of 8 it stays under 0.7 GB, and runs a little faster (fewer fresh pages to fault in)."""


def _encode(encoder: Encoder, pixels: np.ndarray) -> Features:
    """`encoder(pixels)`, ENCODER_CHUNK photos at a time."""
    parts = [encoder(pixels[i:i + ENCODER_CHUNK]) for i in range(0, len(pixels), ENCODER_CHUNK)]
    tuned = None if parts[0].tuned is None else (torch.cat([p.tuned[0] for p in parts]),
                                                 torch.cat([p.tuned[1] for p in parts]))
    return Features(torch.cat([p.pooled for p in parts]), torch.cat([p.grid for p in parts]), tuned)


def encode_photos(encoder: Encoder, paths: Sequence[Path], batch_size: int = 32,
                  progress: bool = True) -> Iterator[Batch]:
    """Encode photos in batches on the encoder's device, decoding the next batch's JPEGs while the network runs.

    Yields one `Batch` per `batch_size` paths, in order, its features on the encoder's device.
    """
    size = encoder.spec.input_size

    def read(batch: Sequence[int]) -> tuple[list[int], np.ndarray, dict[int, str], dict[int, str]]:
        ok, pixels, errors, warned = [], [], {}, {}
        for i in batch:
            try:
                img, warning = read_photo(paths[i], size)
                pixels.append(to_pixels(img, size))
                ok.append(i)
                if warning:
                    warned[i] = warning
            except CaptionerError as e:
                errors[i] = str(e)
        return ok, np.stack(pixels) if pixels else np.empty((0, size, size, 3), np.uint8), errors, warned

    bar = tqdm(total=len(paths), desc="encoding", unit="photo", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(1) as reader:  # its thread starts with the second batch: the first has nothing to overlap
        batches = list(_batches(range(len(paths)), batch_size))
        pending = None
        for b in range(len(batches)):
            ok, pixels, errors, warned = pending.result() if pending else read(batches[0])
            if b + 1 < len(batches):
                pending = reader.submit(read, batches[b + 1])
            features = _encode(encoder, pixels) if ok else Features(*(torch.empty(0, device=encoder.device),) * 2)
            bar.update(len(batches[b]))
            yield Batch(ok, features.pooled, features.grid, errors, warned, features.tuned)
    bar.close()


def build_cache(encoder: Encoder, paths: Sequence[Path], root: str | Path, shard_size: int = 1024,
                batch_size: int = 32, progress: bool = True,
                encode: Callable | None = None) -> tuple[FeatureCache, list[str | None], dict[Path, str]]:
    """Encode every photo not cached yet (on the encoder's device; the shards hold float16 from the host); returns
    the cache, each photo's hash and the photos that failed.

    A photo that cannot be read or decoded is left out (its hash is None if even
    its bytes cannot be read) and reported with its reason; the others go on.
    `encode(paths, batch_size, progress)` yields what `encode_photos` does (default:
    `encode_photos` with `encoder`; `distributed.batch.encode_stream` encodes on a Ray cluster).
    """
    encode = encode or (lambda todo, size, bar: encode_photos(encoder, todo, size, bar))
    cache = FeatureCache.open(root, encoder.spec.key)
    failed: dict[Path, str] = {}
    hashes = hash_photos(paths, failed=failed)
    todo: dict[str, Path] = {}
    for h, p in zip(hashes, paths):
        if h is not None and h not in cache and h not in todo:
            todo[h] = p
    if todo:
        todo_hashes, todo_paths = list(todo), list(todo.values())
        buffer: tuple[list[str], list[np.ndarray], list[np.ndarray]] = ([], [], [])
        for ok, pooled, grid, errors, warned, _ in encode(todo_paths, batch_size, progress):
            failed.update({todo_paths[i]: msg for i, msg in errors.items()})
            for msg in warned.values():
                warnings.warn(msg, TruncatedPhotoWarning, stacklevel=2)
            if not ok:  # every photo of the batch failed: nothing to store
                continue
            buffer[0].extend(todo_hashes[i] for i in ok)
            buffer[1].append(pooled.cpu().numpy())
            buffer[2].append(grid.cpu().numpy())
            if len(buffer[0]) >= shard_size:
                cache.add(buffer[0], np.concatenate(buffer[1]), np.concatenate(buffer[2]))
                buffer = ([], [], [])
        if buffer[0]:
            cache.add(buffer[0], np.concatenate(buffer[1]), np.concatenate(buffer[2]))
    return cache, hashes, failed
