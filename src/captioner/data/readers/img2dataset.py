"""img2dataset and webdataset downloads: shard folders of KEY.jpg with KEY.txt or KEY.json, or .tar shards."""
from __future__ import annotations

import json
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from ...errors import CaptionerError
from ...files import write_atomic
from ..images import PHOTO_SUFFIXES
from . import register
from .common import MALFORMED, MISSING_IMAGE, UNDECODABLE, Collector, Corpus, hash_split

Sample = dict[str, str | bytes]  # "image": the photo's path relative to the image root; "txt", "json": file bytes

def _sample_key(name: str) -> tuple[str, str]:
    """A webdataset member or img2dataset file name split into its sample key and its extension.

    As in webdataset, the extension starts at the first dot of the base name:
    `00000/000000123.jpg` -> (`00000/000000123`, `jpg`).
    """
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()

def _sample_caption(sample: Sample, name: str) -> tuple[str | None, str, str]:
    """The caption of one sample from its `txt` file, else its `json` file's "caption";
    without one, None with the kind of problem and why."""
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8-sig"), "", ""
        except UnicodeDecodeError:
            return None, UNDECODABLE, f"{name}.txt holds bytes that are not UTF-8"
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            return None, MALFORMED, f"{name}.json is not a JSON object"
        if isinstance(caption, str):
            return caption, "", ""
    return None, MALFORMED, f"{name} has no .txt and no caption in its .json"

def _add_file(samples: dict[str, Sample], name: str, read: Callable[[], bytes]) -> str | None:
    """File `name` of a sample into `samples`; returns the photo's name if it is the sample's photo."""
    key, ext = _sample_key(name)
    if f".{ext}" in PHOTO_SUFFIXES:
        samples.setdefault(key, {})["image"] = name
        return name
    if ext in ("txt", "json"):
        samples.setdefault(key, {})[ext] = read()
    return None

def _folder_samples(root: Path) -> dict[str, Sample]:
    """The samples of img2dataset's "files" output: shard folders of KEY.jpg, KEY.txt, KEY.json."""
    samples: dict[str, Sample] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            path = Path(folder) / name
            _add_file(samples, path.relative_to(root).as_posix(), path.read_bytes)
    return samples

def _tar_samples(shard: Path, image_root: Path) -> dict[str, Sample]:
    """The samples of one webdataset `.tar` shard, its photos extracted into image_root/<shard name>/.

    A photo already there with the same size is not written again, so preparing twice is cheap.
    """
    samples: dict[str, Sample] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                name = f"{shard.stem}/{member.name.removeprefix('./')}"
                if not member.isfile() or ".." in name.split("/"):
                    continue
                data = tar.extractfile(member).read()
                if _add_file(samples, name, lambda: data):
                    target = image_root / name
                    if not (target.is_file() and target.stat().st_size == len(data)):
                        target.parent.mkdir(parents=True, exist_ok=True)
                        write_atomic(target, data)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        reason = str(e).splitlines()[0].rstrip(":")
        raise CaptionerError(f"{shard} is not a readable tar shard ({reason}); copy it again or leave it "
                             "out.") from None
    return samples


@register("img2dataset", "an img2dataset or webdataset output folder (shard folders of KEY.jpg "
          "+ KEY.txt, or .tar shards, whose photos go to OUT/images)", photos=lambda source, out: out / "images")
def read_img2dataset(root: str | Path, image_root: str | Path | None = None) -> Corpus:
    """img2dataset / webdataset output: each photo KEY.jpg with its caption in KEY.txt (or KEY.json's "caption").

    `root` is a folder of shard folders (`00000/KEY.jpg`, as img2dataset's
    "files" output writes), a folder of `.tar` shards (its "webdataset"
    output), or one `.tar`. Photos inside tar shards are extracted into
    `image_root` (prepare's default: OUT/images); a folder that holds `.tar`
    shards is read from them alone. The split is hash_split of the sample's key,
    the same in either layout.
    """
    root = Path(root)
    expected = "an img2dataset folder of shard folders (00000/KEY.jpg with KEY.txt) or of .tar shards"
    if not root.exists():
        raise CaptionerError(f"{root} does not exist; expected {expected}.")
    tars = [root] if root.is_file() else sorted(root.glob("*.tar"))
    if tars and image_root is None:
        raise CaptionerError(f"{root} holds tar shards: name a folder to extract their photos into (--images).")
    image_root = Path(image_root) if tars else root
    image_root.mkdir(parents=True, exist_ok=True)
    col = Collector(image_root)
    for samples in [_tar_samples(shard, image_root) for shard in tars] if tars else [_folder_samples(root)]:
        for key, sample in samples.items():
            where = f"{key}.txt" if "txt" in sample else f"{key}.json" if "json" in sample else key
            caption, kind, why = _sample_caption(sample, Path(key).name)
            if "image" not in sample:
                col.problems.add(MISSING_IMAGE, where, f"no photo for the caption of {key}")
            elif caption is None:
                col.problems.add(kind, where, why)
            else:
                col.add(where, sample["image"], caption, hash_split(key))
    if not col.corpus.records and not col.problems.total:
        raise CaptionerError(f"{root} holds no photos with captions; expected {expected}.")
    return col.corpus
