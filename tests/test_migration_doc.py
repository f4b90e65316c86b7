"""Every Python block of docs/MIGRATION.md runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "MIGRATION.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_the_guide_has_its_blocks():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index, monkeypatch):
    # Blocks set environment variables; each starts from, and leaves, a clean one.
    for name in list(os.environ):
        if name.startswith(("RATE_LIMIT_", "REQUESTS_PER_", "BURST_SIZE", "USE_NEW_")):
            monkeypatch.delenv(name)
    saved = dict(os.environ)
    try:
        code = compile(BLOCKS[index], f"{DOC.name} python block {index + 1}", "exec")
        exec(code, {"__name__": f"migration_block_{index + 1}"})
    finally:
        os.environ.clear()
        os.environ.update(saved)
