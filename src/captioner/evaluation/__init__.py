"""Evaluation: caption metrics the COCO caption toolkit's way (metrics.py), a run on a split, its report."""
from ..extras import require

require("train", "pycocoevalcap")
