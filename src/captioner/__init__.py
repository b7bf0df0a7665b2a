"""captioner: describe photos in fluent English on a laptop CPU."""
__version__ = "0.1.0"
