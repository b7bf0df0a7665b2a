"""captioner: describe photos in fluent English on a laptop CPU."""
from .version import __version__

__all__ = ["Caption", "Captioner", "__version__"]


def __getattr__(name: str):
    """`Caption` and `Captioner`, imported when first asked for: they bring torch, which `captioner --help` and
    `captioner --version` need not wait for."""
    if name in ("Caption", "Captioner"):
        from . import captioning

        return getattr(captioning, name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
