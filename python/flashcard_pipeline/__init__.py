"""flashcard_pipeline: the rate limiters of the flashcard pipeline, on a Rust engine."""

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version lives in the extension; importing it lazily keeps the pure-Python modules
    # (exceptions) importable without it.
    if name == "__version__":
        from flashcard_pipeline._native import __version__

        return __version__
    raise AttributeError(f"module 'flashcard_pipeline' has no attribute {name!r}")
