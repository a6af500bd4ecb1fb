"""Fault injection and rate limits, per endpoint, changeable while the emulator runs.

Every random decision for an endpoint comes from its own generator seeded with
`f"{seed}:{endpoint}"`, so a run with the same seed and the same order of requests to that
endpoint sees the same faults, whatever the traffic to other endpoints.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

ENDPOINTS = (
    "session",
    "stream",
    "meter_events",
    "adjustments",
    "meters",
    "event_summaries",
    "events",
)


class Action(Enum):
    """What the fault layer decided for one request."""

    PROCEED = "proceed"
    ERROR = "error"  # answer a 5xx without processing
    DROP = "drop"  # close the connection without answering
    RATE_LIMITED = "rate_limited"  # 429 from a burst
    ERROR_AFTER = "error_after"  # process, then answer a 5xx (an ambiguous failure)
    DROP_AFTER = "drop_after"  # process, then close the connection


@dataclass
class FaultSpec:
    """Faults for one endpoint. Rates are shares of requests, 0.0 to 1.0."""

    error_rate: float = 0.0
    error_statuses: list[int] = field(default_factory=lambda: [500, 503])
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # > 0: latency_ms is the median of a log-normal latency of this shape (a long tail, as
    # real networks and Stripe have: sigma 0.5 puts p99 at about 3.2 x the median)
    latency_sigma: float = 0.0
    drop_rate: float = 0.0
    burst_429_rate: float = 0.0
    burst_429_length: int = 10
    retry_after_s: int = 1
    error_after_rate: float = 0.0
    drop_after_rate: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}; known: {sorted(known)}")
        spec = cls(**data)
        for name in (
            "error_rate",
            "drop_rate",
            "burst_429_rate",
            "error_after_rate",
            "drop_after_rate",
        ):
            value = getattr(spec, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if not 0.0 <= spec.latency_sigma <= 3.0:
            raise ValueError(f"latency_sigma must be between 0 and 3, got {spec.latency_sigma}")
        return spec

    @property
    def active(self) -> bool:
        return any(
            (
                self.error_rate,
                self.latency_ms,
                self.latency_jitter_ms,
                self.drop_rate,
                self.burst_429_rate,
                self.error_after_rate,
                self.drop_after_rate,
            )
        )


@dataclass
class Decision:
    action: Action
    latency_s: float = 0.0
    status: int = 200
    retry_after_s: int = 1


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    stamp: float


class FaultInjector:
    """Decides, per request, latency and any fault; holds the per-endpoint 429 bursts."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._seed = seed
        self._specs: dict[str, FaultSpec] = {}
        self._rngs: dict[str, random.Random] = {}
        self._burst_left: dict[str, int] = {}

    def configure(self, faults: dict[str, dict[str, Any]], seed: int | None = None) -> None:
        """Replace the fault settings of the named endpoints ("*" for all of them)."""
        parsed: dict[str, FaultSpec] = {}
        for name, spec in faults.items():
            targets = ENDPOINTS if name == "*" else (name,)
            for target in targets:
                if target not in ENDPOINTS:
                    raise ValueError(f"unknown endpoint {target!r}; known: {', '.join(ENDPOINTS)}")
                parsed[target] = FaultSpec.from_dict(spec)
        with self._lock:
            if seed is not None:
                self._seed = seed
                self._rngs.clear()
                self._burst_left.clear()
            self._specs.update(parsed)

    def clear(self) -> None:
        with self._lock:
            self._specs.clear()
            self._rngs.clear()
            self._burst_left.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seed": self._seed,
                "faults": {name: asdict(spec) for name, spec in self._specs.items()},
            }

    def decide(self, endpoint: str) -> Decision:
        with self._lock:
            spec = self._specs.get(endpoint)
            if spec is None or not spec.active:
                return Decision(Action.PROCEED)
            rng = self._rngs.get(endpoint)
            if rng is None:
                rng = self._rngs[endpoint] = random.Random(f"{self._seed}:{endpoint}")  # noqa: S311
            latency = spec.latency_ms + (rng.random() * spec.latency_jitter_ms)
            if spec.latency_sigma:
                latency *= math.exp(rng.gauss(0.0, spec.latency_sigma))
            decision = Decision(Action.PROCEED, latency_s=latency / 1000.0)
            roll = rng.random()
            left = self._burst_left.get(endpoint, 0)
            if left == 0 and spec.burst_429_rate and rng.random() < spec.burst_429_rate:
                left = spec.burst_429_length
            if left > 0:
                self._burst_left[endpoint] = left - 1
                decision.action = Action.RATE_LIMITED
                decision.status = 429
                decision.retry_after_s = spec.retry_after_s
                return decision
            thresholds = (
                (spec.drop_rate, Action.DROP),
                (spec.error_rate, Action.ERROR),
                (spec.error_after_rate, Action.ERROR_AFTER),
                (spec.drop_after_rate, Action.DROP_AFTER),
            )
            cumulative = 0.0
            for rate, action in thresholds:
                cumulative += rate
                if roll < cumulative:
                    decision.action = action
                    break
            if decision.action in (Action.ERROR, Action.ERROR_AFTER):
                decision.status = rng.choice(spec.error_statuses)
            return decision


class RateLimiter:
    """Token buckets per endpoint (off unless configured): `rate` per second, `burst` deep."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}

    def configure(self, limits: dict[str, dict[str, float] | None]) -> None:
        now = time.monotonic()
        with self._lock:
            for name, limit in limits.items():
                if name not in ENDPOINTS:
                    raise ValueError(f"unknown endpoint {name!r}; known: {', '.join(ENDPOINTS)}")
                if not limit:
                    self._buckets.pop(name, None)
                    continue
                rate = float(limit["rate"])
                if not math.isfinite(rate) or rate <= 0:
                    raise ValueError(f"rate for {name} must be a positive number")
                burst = float(limit.get("burst", rate))
                self._buckets[name] = _Bucket(rate, burst, burst, now)

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {n: {"rate": b.rate, "burst": b.burst} for n, b in self._buckets.items()}

    def acquire(self, endpoint: str) -> int | None:
        """None when the request may go on, else the seconds to put in Retry-After."""
        with self._lock:
            bucket = self._buckets.get(endpoint)
            if bucket is None:
                return None
            now = time.monotonic()
            bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * bucket.rate)
            bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate))
