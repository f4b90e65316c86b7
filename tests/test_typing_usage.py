"""`tests/typing/readme_usage.py` (the README's calls, which `make test` type-checks with
`mypy --strict`) also runs as written, so it shows what users really write."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest


@pytest.mark.usefixtures("clean_rate_env")
def test_the_readme_usage_file_runs():
    runpy.run_path(str(Path(__file__).parent / "typing" / "readme_usage.py"), run_name="__main__")
