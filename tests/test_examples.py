"""The runnable examples the guide points to still run."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_usage_examples_run(capsys):
    runpy.run_path(str(EXAMPLES / "sharded_rate_limiter_usage.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "threads admitted: 20" in out
    assert "batch processed in order: True" in out
    assert "with retries: ['ok', 'ok', 'ok']" in out
