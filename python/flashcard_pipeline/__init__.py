"""flashcard_pipeline: the rate limiters of the flashcard pipeline, on a Rust engine."""

from flashcard_pipeline._native import __version__

__all__ = ["__version__"]
