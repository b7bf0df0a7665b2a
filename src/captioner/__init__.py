"""captioner: describe photos in fluent English on a laptop CPU."""
__version__ = "0.1.0"

from .captioning import Caption, Captioner

__all__ = ["Caption", "Captioner"]
