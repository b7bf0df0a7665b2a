"""The optional parts of captioner, and the one-sentence error when one is not installed.

`pip install captioner` is the core: caption photos, the Python API. Everything
else is an extra of pyproject.toml; a module that needs one calls `require`
before its first import of the extra's packages, so a missing extra reads as
what to install instead of an ImportError.
"""
from __future__ import annotations

import importlib

from .errors import CaptionerError

FEATURES = {
    "gallery": "the gallery and its search (captioner index, similar, search, align)",
    "web": "the web app (captioner serve)",
    "train": "training and evaluation (captioner train, evaluate, calibrate)",
    "dinov2": "the dinov2-vits14 encoder",
    "video": "video (captioner video)",
    "ray": "Ray (--ray and --ray-workers)",
}
"""Each extra and what needs it, as the error names it."""


def missing(extra: str, module: str) -> CaptionerError:
    """The error for `module` of `extra` not being installed: what needs it and the command that installs it."""
    return CaptionerError(f"{FEATURES[extra]} needs the [{extra}] extra, and {module} is not installed: "
                          f"pip install 'captioner[{extra}]'")


def require(extra: str, *modules: str) -> None:
    """Import `modules` (the packages of `extra`), or raise the CaptionerError saying what to install.

    Importing, not only finding, catches a package whose own dependencies are missing
    (Ray without its Data and Train parts); the module named is the one that failed.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise missing(extra, e.name or module) from None
