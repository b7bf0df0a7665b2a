"""MS-COCO's captions_*.json annotation files."""
from __future__ import annotations

from pathlib import Path

from ...errors import CaptionerError
from . import register
from .common import DUPLICATE, MALFORMED, SPLITS, Collector, Corpus, load_json, split_name


def _coco_split(path: Path, split: str | None) -> str:
    if split is not None:
        if split_name(split) not in SPLITS:
            raise CaptionerError(f"Unknown split {split!r}; expected train, dev (or val) or test.")
        return split_name(split)
    for word, ours in (("train", "train"), ("val", "dev"), ("test", "test")):
        if word in path.name.lower():
            return ours
    raise CaptionerError(f"Cannot tell the split of {path} from its name; expected train, val or test "
                         "in it (like captions_val2014.json) or an explicit split.")


@register("coco", "a COCO captions_*.json")
def read_coco(path: str | Path, image_root: str | Path, split: str | None = None) -> Corpus:
    """A COCO captions file (captions_train2014.json, ...); the split comes from its name or `split`."""
    path = Path(path)
    expected = ('a COCO captions file like captions_train2014.json: {"images": [{"id", "file_name"}], '
                '"annotations": [{"image_id", "caption"}]}')
    data = load_json(path, expected)
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise CaptionerError(f"{path} is not a COCO captions file; expected {expected}.")
    split = _coco_split(path, split)
    col = Collector(Path(image_root))
    files: dict[int | str, str] = {}
    for number, entry in enumerate(data["images"]):
        e = entry if isinstance(entry, dict) else {}
        if isinstance(e.get("id"), (int, str)) and isinstance(e.get("file_name"), str):
            files[e["id"]] = e["file_name"]
        else:
            col.problems.add(MALFORMED, f"{path.name}: images[{number}]", "expected an id and a file_name")
    for number, ann in enumerate(data["annotations"]):
        a = ann if isinstance(ann, dict) else {}
        image_id, ann_id, caption = a.get("image_id"), a.get("id"), a.get("caption")
        known = isinstance(image_id, (int, str)) and image_id in files
        where = f"{path.name}: image {files[image_id]}" if known else f"{path.name}: annotations[{number}]"
        if not known or not isinstance(caption, str) or not (ann_id is None or isinstance(ann_id, (int, str))):
            col.problems.add(MALFORMED, where, "expected a caption and the image_id of an entry in images")
        elif ann_id is not None and col.repeated(ann_id):
            col.problems.add(DUPLICATE, where, f"annotation id {ann_id} appears twice")
        else:
            col.add(where, files[image_id], caption, split)
    return col.corpus
