"""Fault decisions and rate limits: deterministic by seed, shares as configured."""

from __future__ import annotations

from collections import Counter

import pytest

from devkit.emulator.faults import Action, FaultInjector, RateLimiter


def sequence(injector: FaultInjector, endpoint: str, n: int) -> list[Action]:
    return [injector.decide(endpoint).action for _ in range(n)]


def test_no_faults_by_default() -> None:
    injector = FaultInjector(seed=1)
    decisions = [injector.decide("stream") for _ in range(100)]
    assert {d.action for d in decisions} == {Action.PROCEED}
    assert all(d.latency_s == 0 for d in decisions)


def test_same_seed_same_sequence_whatever_other_endpoints_see() -> None:
    spec = {"error_rate": 0.2, "drop_rate": 0.1, "burst_429_rate": 0.05, "burst_429_length": 3}
    first = FaultInjector(seed=42)
    first.configure({"*": spec})
    second = FaultInjector(seed=42)
    second.configure({"*": spec})
    sequence(second, "session", 17)  # traffic elsewhere must not shift the stream's faults
    assert sequence(first, "stream", 300) == sequence(second, "stream", 300)
    third = FaultInjector(seed=43)
    third.configure({"*": spec})
    assert sequence(third, "stream", 300) != sequence(first, "stream", 300)


def test_reseeding_restarts_the_sequence() -> None:
    injector = FaultInjector(seed=5)
    injector.configure({"stream": {"error_rate": 0.5}})
    once = sequence(injector, "stream", 50)
    injector.configure({}, seed=5)
    assert sequence(injector, "stream", 50) == once


def test_shares_follow_the_rates() -> None:
    injector = FaultInjector(seed=3)
    injector.configure({"stream": {"error_rate": 0.3, "drop_rate": 0.1, "error_statuses": [503]}})
    decisions = [injector.decide("stream") for _ in range(5000)]
    counts = Counter(d.action for d in decisions)
    assert 0.26 < counts[Action.ERROR] / 5000 < 0.34
    assert 0.07 < counts[Action.DROP] / 5000 < 0.13
    assert {d.status for d in decisions if d.action is Action.ERROR} == {503}


def test_a_burst_answers_429_for_its_whole_length() -> None:
    injector = FaultInjector(seed=0)
    injector.configure(
        {"stream": {"burst_429_rate": 1.0, "burst_429_length": 4, "retry_after_s": 2}}
    )
    decisions = [injector.decide("stream") for _ in range(8)]
    assert all(d.action is Action.RATE_LIMITED for d in decisions)
    assert {d.retry_after_s for d in decisions} == {2}
    injector.configure({"stream": {"burst_429_rate": 0.0, "error_rate": 0.0}})
    assert injector.decide("stream").action is Action.PROCEED


def test_latency_with_jitter_stays_in_range() -> None:
    injector = FaultInjector(seed=9)
    injector.configure({"stream": {"latency_ms": 20, "latency_jitter_ms": 10}})
    latencies = [injector.decide("stream").latency_s for _ in range(200)]
    assert all(0.020 <= s <= 0.030 for s in latencies)
    assert len(set(latencies)) > 1


@pytest.mark.parametrize(
    "faults",
    [
        {"nowhere": {"error_rate": 0.1}},
        {"stream": {"error_rate": 1.5}},
        {"stream": {"typo_rate": 0.1}},
    ],
)
def test_bad_fault_settings_are_refused(faults: dict[str, dict[str, float]]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        FaultInjector().configure(faults)


def test_rate_limiter_allows_the_burst_then_asks_to_retry() -> None:
    limiter = RateLimiter()
    assert limiter.acquire("stream") is None  # off unless configured
    limiter.configure({"stream": {"rate": 0.5, "burst": 3}})
    assert [limiter.acquire("stream") for _ in range(3)] == [None, None, None]
    retry_after = limiter.acquire("stream")
    assert retry_after is not None
    assert 1 <= retry_after <= 2
    assert limiter.acquire("session") is None  # other endpoints are not limited
    limiter.configure({"stream": None})
    assert limiter.acquire("stream") is None


def test_a_lognormal_latency_has_its_median_and_a_long_tail() -> None:
    injector = FaultInjector(seed=3)
    injector.configure({"stream": {"latency_ms": 40, "latency_sigma": 0.5}})
    latencies = sorted(injector.decide("stream").latency_s * 1000 for _ in range(4000))
    median, p99 = latencies[2000], latencies[3960]
    assert 37 < median < 43
    assert 110 < p99 < 150  # about 40 x exp(2.33 x 0.5)
    assert min(latencies) > 0


def test_a_latency_shape_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_sigma"):
        FaultInjector().configure({"stream": {"latency_ms": 40, "latency_sigma": -1}})
