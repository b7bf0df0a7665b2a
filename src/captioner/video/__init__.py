"""Video: files, streams and cameras captioned scene by scene (`captioner video`).

sources.py reads frames every few seconds (PyAV), scenes.py finds where the picture changes and captions each
scene once through `Captioner.describe`, subtitles.py writes WebVTT and SubRip. `scenes(captioner, source)` is
what every caller consumes: the command line, and anything that indexes or distributes videos.
"""
from ..extras import require

require("video", "av")
