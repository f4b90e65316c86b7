"""The benchmark scripts' own checks hold, at small sizes, so that `make bench` runs to its end.
(The peers' benchmarks need the bench requirements; this one needs only the package.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pending", [0, 10])
def test_pending_reservations_measures_every_call(pending):
    bench = _load("pending_reservations")
    costs = {**bench.queued(pending), **bench.held(pending)}
    assert len(costs) == 8 and all(cost > 0 for cost in costs.values())


def test_skewed_measures_both_limiters_from_one_and_four_threads():
    results = _load("skewed").main(0.05)
    assert len(results) == 4
    assert all(r.calls_per_second > 0 and 0 <= r.slow_path_share <= 1 for r in results.values())


def test_redis_waiting_measures_every_size():
    results = _load("redis_waiting").main((0, 10), calls=20)
    assert len(results) == 2 and all(call > 0 and server > 0 for call, server in results.values())
