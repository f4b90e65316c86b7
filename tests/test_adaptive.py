"""AdaptiveShardedRateLimiter: its shards follow what callers do (how many keys spread over,
and each one's share of the rate and burst), exactly, inline, with nothing spawned."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time

import pytest
from conftest import HAMMER, HAMMER_BURST, check_within_rate, max_excess_over_bucket, thread_hammer

from flashcard_pipeline.rate_limiter_v2 import (
    AdaptiveShardedRateLimiter,
    ManualClock,
    ShardedRateLimiter,
)

# The setting the adaptive limiter was first tried in: 16 shards, 2,000 tokens a second with
# a burst of 100, Zipf(1.1) demand over 10,000 keys at twice the rate for two seconds.
RATE, BURST, STEP = 2000, 100, 0.00025


def zipf_keys(count: int, seed: int = 7) -> list[str]:
    keys = [f"user-{k}" for k in range(10_000)]
    weights = list(itertools.accumulate(1 / (k + 1) ** 1.1 for k in range(len(keys))))
    return random.Random(seed).choices(keys, cum_weights=weights, k=count)


def zipf_run(adaptive: bool) -> tuple[list[float], list[dict], ShardedRateLimiter]:
    clock = ManualClock()
    options = dict(rate=RATE, period=1.0, burst_size=BURST, clock=clock)
    limiter = (
        AdaptiveShardedRateLimiter(initial_shards=16, **options)
        if adaptive
        else ShardedRateLimiter(shards=16, **options)
    )
    admitted, balances = [], []
    keys = iter(zipf_keys(8000))
    for _second in range(2):
        for _ in range(4000):
            if limiter.try_acquire(next(keys)):
                admitted.append(clock.time())
            clock.advance(STEP)
        balances.append(limiter.get_shard_balance())
    return admitted, balances, limiter


def test_zipf_demand_rebalances_off_the_slow_path():
    fixed, (_, fixed_after), _ = zipf_run(adaptive=False)
    adaptive, (first, after), limiter = zipf_run(adaptive=True)
    bound = BURST + RATE * 7999 * STEP
    for admitted in (fixed, adaptive):
        assert max_excess_over_bucket(admitted, BURST, RATE, 1.0) <= 1e-9
        assert len(admitted) >= 0.99 * bound
    # Uncontended (one thread), the adaptive limiter runs on one shard: nothing to gather.
    assert first["rebalances"] >= 1
    assert after["active_shards"] == 1
    assert after["imbalance_ratio"] < limiter.rebalance_threshold
    assert after["balanced"] is True
    assert after["slow_path_share"] * 10 <= fixed_after["slow_path_share"]


def test_the_shares_add_up_to_the_rate_and_the_burst_after_every_rebalance():
    clock = ManualClock()
    limiter = AdaptiveShardedRateLimiter(999.9, 1.0, initial_shards=16, burst_size=77.7, clock=clock)
    stream = random.Random(3)
    moved = 0
    for round_ in range(40):
        for _ in range(500):
            limiter.try_acquire(f"k{stream.randrange(round_ + 2)}")
            clock.advance(0.0001)
        moved += limiter.rebalance()
        balance = limiter.get_shard_balance()
        assert sum(balance["rate_shares"]) == 999.9
        assert sum(balance["burst_shares"]) == 77.7
    assert moved == 40
    assert limiter.get_shard_balance()["rebalances"] >= 40


def test_one_hot_key_gets_the_whole_budget():
    clock = ManualClock()
    limiter = AdaptiveShardedRateLimiter(1600, 1.0, initial_shards=16, clock=clock)
    admitted = 0
    for _ in range(2000):  # two seconds, draining every millisecond
        while limiter.try_acquire("hot"):
            admitted += 1
        clock.advance(0.001)
    # The burst and 1.999 s of refill (the last 0.4 of a token not yet whole).
    assert admitted == 1600 + 3198
    assert limiter.get_shard_balance()["rebalances"] >= 1


def test_no_task_or_thread_is_created_per_call():
    clock = ManualClock()
    limiter = AdaptiveShardedRateLimiter(1000, 1.0, initial_shards=8, clock=clock)

    async def calls() -> int:
        before = len(asyncio.all_tasks())
        for i in range(2000):
            await limiter.acquire(f"k{i % 50}")
            assert len(asyncio.all_tasks()) == before
        return before

    threads = threading.active_count()
    for i in range(20_000):
        limiter.try_acquire(f"k{i % 50}")
        clock.advance(0.001)
    assert threading.active_count() == threads
    asyncio.run(calls())
    assert threading.active_count() == threads
    assert limiter.get_shard_balance()["rebalances"] >= 1


def test_rebalancing_while_four_threads_take_loses_and_duplicates_nothing():
    clock = ManualClock()
    limiter = AdaptiveShardedRateLimiter(10_000, 1.0, initial_shards=16, burst_size=5000, clock=clock)
    expected, total = 5000.0, 0
    for round_ in range(3):
        admitted = [0] * 4

        def worker(t: int) -> None:
            stream = random.Random(t * 1000 + round_)
            refusals = 0
            while refusals < 500:
                key = f"k{stream.randrange(2 if t == 0 else 500)}"
                if limiter.try_acquire(key):
                    admitted[t] += 1
                    refusals = 0
                else:
                    refusals += 1

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for w in workers:
            w.start()
        rebalances = 0
        while any(w.is_alive() for w in workers):
            rebalances += limiter.rebalance()
        for w in workers:
            w.join()
        for key in range(64):
            while limiter.try_acquire(f"k{key}"):
                admitted[0] += 1
        total += sum(admitted)
        # The clock stood still: exactly what had refilled (a tenth of a token more than a
        # whole number each round, so no fraction of a tick can tip the count).
        assert total == int(expected), (round_, rebalances)
        clock.advance(0.25001)  # 2,500.1 tokens
        expected += 2500.1


def test_a_key_asking_more_than_a_shards_share_is_reported_by_name():
    clock = ManualClock()
    limiter = AdaptiveShardedRateLimiter(10_000, 1.0, initial_shards=16, burst_size=10_000, clock=clock)
    stream = random.Random(5)
    assert limiter.get_shard_balance()["hot_keys"] == []
    step = 0
    while limiter.get_shard_balance()["rebalances"] == 0:
        limiter.try_acquire("hot" if step % 2 == 0 else f"k{stream.randrange(1000)}")
        clock.advance(0.00005)
        step += 1
    (hot,) = limiter.get_shard_balance()["hot_keys"]
    assert hot["key"] == "hot"
    assert hot["share"] == pytest.approx(0.5, abs=0.2)  # of about 125 sampled decisions


def test_hammer_threads_in_blocking_acquire_on_skewed_keys_stay_within_the_rate():
    """Real clock: four threads in blocking acquire() on Zipf keys at 2,000/s, the shards
    moving as they go (looks every 100 ms): never over, nothing lost."""
    rate = 2000
    limiter = AdaptiveShardedRateLimiter(rate, 1.0, initial_shards=16, burst_size=HAMMER_BURST)
    admitted: list[float] = []

    def worker(t: int):
        keys = zipf_keys(50_000, seed=t)

        def loop(deadline: float) -> None:
            for key in keys:
                if time.monotonic() >= deadline:
                    return
                if limiter.acquire(key, max_wait=1.0):
                    admitted.append(time.monotonic())

        return loop

    started, deadline, finished = thread_hammer([worker(t) for t in range(4)], HAMMER)
    check_within_rate(admitted, started, deadline, finished, rate)


@pytest.mark.asyncio
async def test_hammer_asyncio_tasks_on_skewed_keys_stay_within_the_rate():
    """Real clock: forty asyncio tasks awaiting acquire() on Zipf keys at 2,000/s."""
    rate = 2000
    limiter = AdaptiveShardedRateLimiter(rate, 1.0, initial_shards=16, burst_size=HAMMER_BURST)
    admitted: list[float] = []
    keys = [zipf_keys(5_000, seed=t) for t in range(40)]
    started = time.monotonic()
    deadline = started + HAMMER

    async def task(keys: list[str]) -> None:
        for key in keys:
            if time.monotonic() >= deadline:
                return
            if await limiter.acquire(key, max_wait=1.0):
                admitted.append(time.monotonic())

    await asyncio.gather(*(task(mine) for mine in keys))
    check_within_rate(admitted, started, deadline, time.monotonic(), rate)


@pytest.mark.parametrize("options", [{"algorithm": "sliding_window"}, {"scope": "key"}])
def test_without_shares_to_move_it_is_a_sharded_limiter(options):
    limiter = AdaptiveShardedRateLimiter(100, 1.0, initial_shards=4, clock=ManualClock(), **options)
    for i in range(50):
        limiter.try_acquire(f"k{i}")
    assert limiter.rebalance() is False
    balance = limiter.get_shard_balance()
    assert balance["rebalances"] == 0
    assert balance["active_shards"] == limiter.shards
    assert balance["hot_keys"] == []
