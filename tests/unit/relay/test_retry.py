"""The retry policy the operator tools share with the forwarder's rule: which answers are
retried, the backoff (full jitter; Retry-After plus jitter after a 429), the deadline, and the
rate limit."""

from __future__ import annotations

import pytest

from meter_relay.config import RetryPolicy
from meter_relay.retry import (
    TOOLS_RETRY,
    RateLimit,
    answer_code,
    backoff_delay,
    retryable,
    with_retries,
)
from meter_relay.stripe_client import Kind, StripeAnswer
from tests.fakes import FakeClock, answer

LIMITED = StripeAnswer(Kind.RATE_LIMITED, 429, "rate_limit", "slow down", retry_after=3.0)


def highest(low: float, high: float) -> float:
    return high


def test_backoff_doubles_up_to_the_ceiling_and_jitters_below_it() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    delays = [backoff_delay(policy, n, answer(503), highest) for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0]
    spans: list[tuple[float, float]] = []

    def lowest(low: float, high: float) -> float:
        spans.append((low, high))
        return low

    assert backoff_delay(policy, 2, answer(503), lowest) == 0.0
    assert spans == [(0.0, 1.0)]  # full jitter: anywhere from nothing to the ceiling


def test_a_429_waits_for_retry_after_plus_the_jitter() -> None:
    assert backoff_delay(TOOLS_RETRY, 1, LIMITED, lambda low, high: 0.0) == 3.0
    assert backoff_delay(TOOLS_RETRY, 1, LIMITED, highest) == 3.5


@pytest.mark.parametrize(
    ("status", "again"), [(200, False), (400, False), (409, True), (503, True)]
)
def test_what_is_retried(status: int, again: bool) -> None:
    assert retryable(answer(status)) is again
    assert retryable(LIMITED)
    assert not retryable(StripeAnswer(Kind.FAILED, 403))
    assert not retryable(StripeAnswer(Kind.SESSION_EXPIRED, 401))


def test_with_retries_gives_up_after_the_policys_attempts() -> None:
    calls: list[float] = []

    def call(timeout: float) -> StripeAnswer:
        calls.append(timeout)
        return answer(503)

    sleeps: list[float] = []
    final = with_retries(call, sleep=sleeps.append, jitter=highest)
    assert final is not None
    assert final.status == 503
    assert calls == [TOOLS_RETRY.request_timeout] * TOOLS_RETRY.max_attempts
    assert sleeps == [0.5, 1.0, 2.0]


def test_no_attempt_or_wait_starts_that_the_deadline_cannot_hold() -> None:
    clock = FakeClock()
    deadline = clock.now + 8.0
    attempts: list[float] = []

    def call(timeout: float) -> StripeAnswer:
        attempts.append(timeout)
        clock.now += 1.0
        return LIMITED

    result = with_retries(
        call,
        sleep=clock.sleep,
        jitter=lambda low, high: 0.0,
        remaining=lambda: deadline - clock.now,
    )
    # 8 s: 5 kept for the DLQ writes leaves 3 for the first attempt; a 429 after 1 s asks for 3
    # more, and 7 - 3 - 5 < 1: no wait, no retry
    assert (result, attempts, clock.sleeps) == (None, [3.0], [])


@pytest.mark.parametrize(
    ("given", "code"),
    [
        (StripeAnswer(Kind.REJECTED, 400, "no_meter"), "no_meter"),
        (StripeAnswer(Kind.TRANSIENT, 503), "http_503"),
        (StripeAnswer(Kind.TRANSIENT, 0, None, "timed out"), "no_answer"),
    ],
)
def test_answer_code(given: StripeAnswer, code: str) -> None:
    assert answer_code(given) == code


def test_rate_limit_spaces_operations() -> None:
    clock = FakeClock()
    limit = RateLimit(4, sleep=clock.sleep, clock=clock.monotonic)
    for _ in range(3):
        limit.wait()
    assert clock.sleeps == [0.25, 0.25]
    clock.now += 10  # idle time is not saved up as a burst
    limit.wait()
    limit.wait()
    assert clock.sleeps == [0.25, 0.25, 0.25]


def test_no_rate_limit_never_sleeps() -> None:
    sleeps: list[float] = []
    limit = RateLimit(None, sleep=sleeps.append)
    for _ in range(5):
        limit.wait()
    assert sleeps == []
