"""The version of captioner, in a module of its own that anything may import without importing the rest."""
__version__ = "0.1.0"
