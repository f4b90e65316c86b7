"""Helpers kept from the old package's ``flashcard_pipeline.utils``.

Only :mod:`flashcard_pipeline.utils.retry` (``RetryConfig``, ``retry_async``, ``retry_sync``,
``retry_with_config``) is here. The old package also exported string and file helpers from
``utils`` (``sanitize_filename``, ``truncate_text``, ``Timer``, ``retry_on_exception``, ...);
they have nothing to do with rate limiting and are not ported.
"""
