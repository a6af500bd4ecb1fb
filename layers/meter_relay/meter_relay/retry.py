"""Retrying a Stripe call: one policy (config.RetryPolicy) and one backoff rule.

A 429 waits for Retry-After plus jitter; 409, 5xx, timeouts and dropped connections back off
exponentially with full jitter. The forwarder's StreamDelivery follows the same rule for the
stream; the operator tools retry their synchronous calls (meter_events, adjustments) here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from meter_relay.config import RetryPolicy
from meter_relay.stripe_client import Kind, StripeAnswer

# The operator tools' calls: a few attempts, long enough apart for a 409 (same customer and
# meter at once) or a short 5xx to pass; each call's timeout is the policy's request_timeout.
TOOLS_RETRY = RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=5.0, request_timeout=10.0)
# Under a deadline: the time kept back for the DLQ writes after the last Stripe call, and the
# least time a Stripe call is started with (each attempt's timeout is bounded by what is left).
SETTLE_SECONDS = 5.0
MIN_ATTEMPT_SECONDS = 1.0

Jitter = Callable[[float, float], float]


def backoff_delay(policy: RetryPolicy, attempt: int, answer: StripeAnswer, jitter: Jitter) -> float:
    """The wait before attempt `attempt + 1`: full-jitter exponential backoff; after a 429
    with Retry-After, that plus the jitter (many clients told the same second spread out)."""
    ceiling = min(policy.max_delay, policy.base_delay * 2 ** (attempt - 1))
    spread = jitter(0.0, ceiling)
    if answer.kind is Kind.RATE_LIMITED and answer.retry_after is not None:
        return answer.retry_after + spread
    return spread


def retryable(answer: StripeAnswer) -> bool:
    """409, 429, 5xx and no answer at all: worth another attempt."""
    return answer.kind in (Kind.TRANSIENT, Kind.RATE_LIMITED)


def with_retries(
    call: Callable[[float], StripeAnswer],
    *,
    policy: RetryPolicy = TOOLS_RETRY,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Jitter = random.uniform,
    remaining: Callable[[], float] | None = None,
) -> StripeAnswer | None:
    """One Stripe call (`call(timeout)`), again after retryable answers, up to the policy's
    attempts. With `remaining` (seconds left), no attempt starts and no wait begins unless
    SETTLE_SECONDS and MIN_ATTEMPT_SECONDS are left after it, and each attempt's timeout is
    bounded by what is left: None when the time ran out before a final answer."""

    def budget(after: float = 0.0) -> float:
        left = math.inf if remaining is None else remaining() - after - SETTLE_SECONDS
        return min(policy.request_timeout, left)

    answer: StripeAnswer | None = None
    for attempt in range(1, policy.max_attempts + 1):
        if budget() < MIN_ATTEMPT_SECONDS:
            return None
        answer = call(budget())
        if not retryable(answer) or attempt == policy.max_attempts:
            return answer
        wait = backoff_delay(policy, attempt, answer, jitter)
        if budget(after=wait) < MIN_ATTEMPT_SECONDS:
            return None
        sleep(wait)
    return answer


def answer_code(answer: StripeAnswer) -> str:
    """Stripe's error code, else the HTTP status, else `no_answer` (a timeout, a reset)."""
    return answer.code or (f"http_{answer.status}" if answer.status else "no_answer")


class RateLimit:
    """At most `per_second` operations a second (None: unlimited); idle time is not saved up."""

    def __init__(
        self,
        per_second: float | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._sleep = sleep
        self._clock = clock

    def delay(self) -> float:
        """Seconds until the next operation may start (what `wait` would sleep)."""
        return max(0.0, self._next - self._clock()) if self._interval else 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
