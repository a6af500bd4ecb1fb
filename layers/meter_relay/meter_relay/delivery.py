"""Batching and delivery: events go to the stream in calls of at most 100, several at once.

Each call retries on its own: a 429 means "slow down", not failure: it waits for Retry-After
(plus jitter) and is retried for as long as the deadline allows, while the calls in flight
adapt (additive increase, multiplicative decrease on 429, as TCP does) instead of hammering
the account's limit; 5xx, timeouts, dropped connections and answers that are not Stripe's back
off exponentially with full jitter, within a bounded number of attempts; an expired session is
replaced once for every thread that saw it fail, and a 400 (or a gateway's 413) for a whole
call is split in halves until the events refused stand alone. Nothing waits past the Lambda
deadline minus a margin, however slowly an answer arrives: what is not known delivered by then
is reported for retry, never dropped. Each event is added with a tag (the forwarder's: its
message and its index there), and the report answers by tag.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from itertools import chain

from meter_relay.config import RetryPolicy
from meter_relay.events import ErrorCode, MeterEvent, Rejection
from meter_relay.observability import logger
from meter_relay.retry import answer_code, backoff_delay
from meter_relay.session import (
    MeterEventSession,
    SessionModeMismatch,
    SessionTokenSource,
    SessionUnavailable,
)
from meter_relay.stripe_client import Kind, MeterEventStream, StripeAnswer, error_param

MAX_EVENTS_PER_CALL = 100
MIN_CALL_SECONDS = 0.25  # no call is started with less time than this left
MAX_SESSION_RENEWALS = 2  # per call: a third 401 in a row means something else is wrong
RATE_LIMIT_BACKOFF_CAP = 5.0  # seconds: a 429 without Retry-After waits at most this (jittered)


class AdaptiveLimit:
    """How many stream calls may be in flight at once, between 1 and `most`: one more for each
    window of successes, halved on a 429 (at most once per `cooldown` seconds: the calls that
    were already in flight when the limit was reached answer 429 together, and that is one
    signal, not several). Shared by every invocation of an execution environment, so a warm
    forwarder starts where the account's limit left it."""

    def __init__(
        self, most: int, cooldown: float = 0.5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self._limit = float(most)
        self._in_flight = 0
        self._cooldown = cooldown
        self._clock = clock
        self._decreased_at = -cooldown
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return int(self._limit)

    def acquire(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) for a place among the calls in flight."""
        with self._changed:
            placed = self._changed.wait_for(
                lambda: self._in_flight < int(self._limit), timeout=max(0.0, timeout)
            )
            if placed:
                self._in_flight += 1
            return placed

    def release(self, rate_limited: bool) -> None:
        with self._changed:
            self._in_flight -= 1
            now = self._clock()
            if rate_limited:
                if now - self._decreased_at >= self._cooldown:
                    self._limit = max(1.0, self._limit / 2)
                    self._decreased_at = now
            else:
                self._limit = min(float(self.most), self._limit + 1 / self._limit)
            self._changed.notify_all()


@dataclass
class CallReport:
    """What happened to one chunk's events, by position in the run, and to its calls. A
    chunk's events are consecutive: the positions delivered are kept as the ranges of its
    calls (10,000 positions as ints in a set cost about a millisecond a batch to make and
    free)."""

    delivered: list[range] = field(default_factory=list)
    # with the ledger on, each delivered range's body as its call sent it (`delivered[i]`'s)
    bodies: list[bytes] = field(default_factory=list)
    rejected: dict[int, Rejection] = field(default_factory=dict)
    retry: set[int] = field(default_factory=set)
    calls: int = 0
    retried_calls: int = 0
    rate_limited_calls: int = 0
    not_stripe_answers: int = 0
    split_calls: int = 0
    late_chunks: int = 0  # calls still unanswered at the deadline: their events go back
    session_renewals: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    retry_reasons: dict[str, int] = field(default_factory=dict)

    def merge(self, other: CallReport) -> None:
        self.delivered.extend(other.delivered)
        self.bodies.extend(other.bodies)
        self.rejected.update(other.rejected)
        self.retry |= other.retry
        self.calls += other.calls
        self.retried_calls += other.retried_calls
        self.rate_limited_calls += other.rate_limited_calls
        self.not_stripe_answers += other.not_stripe_answers
        self.split_calls += other.split_calls
        self.late_chunks += other.late_chunks
        self.session_renewals += other.session_renewals
        self.latencies_ms.extend(other.latencies_ms)
        for reason, count in other.retry_reasons.items():
            self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + count

    def give_up(self, positions: range, reason: str) -> None:
        self.retry.update(positions)
        self.retry_reasons[reason] = self.retry_reasons.get(reason, 0) + len(positions)


@dataclass
class DeliveryReport[T: Hashable]:
    """Where each event ended up, by the tag it was added with: delivered, refused by Stripe
    (with its reason, and the event as sent), or to retry; `calls` describes the stream calls.
    """

    rejected: dict[T, Rejection]
    refused_events: dict[T, MeterEvent]
    retry: set[T]
    calls: CallReport
    _events: Sequence[MeterEvent]
    _tags: Sequence[T]

    @property
    def delivered_count(self) -> int:
        return sum(map(len, self.calls.delivered))

    @property
    def delivered(self) -> set[T]:
        """The tags of the events delivered (built when asked: most callers want the count)."""
        tags = self._tags
        return {tags[position] for part in self.calls.delivered for position in part}

    def delivered_bodies(self) -> list[tuple[range, bytes]] | None:
        """With the ledger on and every event delivered, each call's positions and body, in
        the order of the positions; None otherwise."""
        calls = self.calls
        if len(calls.bodies) != len(calls.delivered) or self.delivered_count != len(self._events):
            return None
        return sorted(zip(calls.delivered, calls.bodies, strict=True), key=_call_start)

    def delivered_events(self) -> tuple[Sequence[T], Sequence[MeterEvent]]:
        """The tags and the events delivered, in the order they were added (two sequences: the
        ledger reads 10,000 a batch; when all were delivered, the run's own, not copies)."""
        tags, events = self._tags, self._events
        if self.delivered_count == len(events):  # the common case: all of them
            return tags, events
        positions = sorted(chain.from_iterable(self.calls.delivered))
        return [tags[p] for p in positions], [events[p] for p in positions]


def _call_start(call: tuple[range, bytes]) -> int:
    return call[0].start


class StreamDelivery:
    """Delivers normalised events to the meter event stream; see the module docstring."""

    def __init__(
        self,
        stream: MeterEventStream,
        tokens: SessionTokenSource,
        policy: RetryPolicy,
        executor: Executor,
        *,
        concurrency: int = 8,
        keep_bodies: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._stream = stream
        # the ledger is on: the calls' bodies are kept, and become its lines (ledger_text)
        self._keep_bodies = keep_bodies
        self._tokens = tokens
        self._policy = policy
        self._executor = executor
        self._concurrency = concurrency
        self.limit = AdaptiveLimit(concurrency)
        self._stuck: list[Future[CallReport]] = []  # calls abandoned at an earlier deadline
        self._sleep = sleep
        self._jitter = jitter

    def deliver(
        self, events: Sequence[MeterEvent], remaining: Callable[[], float]
    ) -> DeliveryReport[int]:
        """Send every event, each tagged with its position; `remaining()` gives the seconds
        left before the Lambda deadline."""
        run: DeliveryRun[int] = self.start(remaining)
        for position, event in enumerate(events):
            run.add(event, position)
        return run.finish()

    def start[T: Hashable](self, remaining: Callable[[], float]) -> DeliveryRun[T]:
        """A delivery that sends each call as soon as its 100 events are known, so the
        network works while the caller is still parsing the rest of the batch."""
        self._stuck = [future for future in self._stuck if not future.done()]
        if self._stuck:
            # an earlier invocation left calls hanging (an answer trickling in): their threads
            # are not this invocation's to wait for; it gets threads of its own
            logger.warning("%d stream calls of an earlier invocation still hang", len(self._stuck))
            self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="stream")
            self._stuck = []
        return DeliveryRun(self, remaining)

    def abandon(self, futures: list[Future[CallReport]]) -> None:
        """Calls not answered by the deadline: the next invocation does not wait for them."""
        self._stuck.extend(futures)

    def submit_chunk(
        self, chunk: range, events: list[MeterEvent], remaining: Callable[[], float]
    ) -> Future[CallReport]:
        return self._executor.submit(self._deliver_chunk, chunk, events, remaining)

    def _deliver_chunk(
        self, chunk: range, events: list[MeterEvent], remaining: Callable[[], float]
    ) -> CallReport:
        report = CallReport()
        parts = [chunk]
        while parts:
            part = parts.pop()
            # a chunk's positions are consecutive; the body is made once (a retry sends the
            # same bytes), and kept when accepted with the ledger on
            body = self._stream.body(events[part.start : part.stop])
            answer = self._send_with_retries(part, body, remaining, report)
            if answer is None:
                continue  # given up: already in report.retry
            if answer.kind is Kind.OK:
                report.delivered.append(part)
                if self._keep_bodies:
                    report.bodies.append(body)
            elif len(part) == 1:
                report.rejected[part[0]] = _rejection(answer)
            else:
                report.split_calls += 1
                middle = len(part) // 2
                parts.extend([part[middle:], part[:middle]])
        return report

    def _send_with_retries(
        self,
        part: range,
        body: bytes,
        remaining: Callable[[], float],
        report: CallReport,
    ) -> StripeAnswer | None:
        """OK, REJECTED or TOO_LARGE answer; None once the part is given up (for retry).

        429s are retried while the deadline allows (they do not use the attempts); other
        transient answers at most `max_attempts` times in all."""
        policy = self._policy
        failures = renewals = throttled = 0
        while True:
            budget = remaining() - policy.deadline_margin
            if budget < MIN_CALL_SECONDS or not self.limit.acquire(budget - MIN_CALL_SECONDS):
                report.give_up(part, "rate_limited" if throttled else "deadline")
                return None
            rate_limited = False
            try:
                session = self._tokens.current()
                # the budget after the session: its renewal may have waited on SSM and the
                # refresher, and the call must still end before the deadline margin
                timeout = min(policy.request_timeout, remaining() - policy.deadline_margin)
                if timeout < MIN_CALL_SECONDS:
                    report.give_up(part, "rate_limited" if throttled else "deadline")
                    return None
                answer = self._call(session, body, timeout, report)
                rate_limited = answer.kind is Kind.RATE_LIMITED
            except SessionUnavailable as error:
                logger.warning("no usable session token: %s", error)
                report.give_up(part, _unavailable_reason(error))
                return None
            finally:
                self.limit.release(rate_limited)
            if failures or renewals or throttled:
                report.retried_calls += 1
            if answer.kind in (Kind.OK, Kind.REJECTED, Kind.TOO_LARGE):
                return answer
            if answer.kind is Kind.SESSION_EXPIRED:
                renewals += 1
                report.session_renewals += 1
                if renewals > MAX_SESSION_RENEWALS:
                    report.give_up(part, "session_refused")
                    return None
                try:
                    self._tokens.expired(session)
                except SessionUnavailable as error:
                    logger.warning("the session could not be renewed: %s", error)
                    report.give_up(part, _unavailable_reason(error))
                    return None
                continue
            if answer.kind is Kind.FAILED:
                logger.error("stream call failed, not retried now: %s", answer.error)
                report.give_up(part, f"http_{answer.status}")
                return None
            if answer.kind is Kind.RATE_LIMITED:
                throttled += 1
                delay = self._rate_limited_delay(throttled, answer)
            else:
                failures += 1
                if answer.not_stripe:
                    report.not_stripe_answers += 1
                    logger.warning("a stream answer is not Stripe's, retried: %s", answer.error)
                if failures >= policy.max_attempts:
                    report.give_up(part, "transient")
                    return None
                delay = backoff_delay(self._policy, failures, answer, self._jitter)
            if delay > remaining() - policy.deadline_margin - MIN_CALL_SECONDS:
                report.give_up(part, "rate_limited" if throttled else "deadline")
                return None
            self._sleep(delay)

    def _call(
        self, session: MeterEventSession, body: bytes, timeout: float, report: CallReport
    ) -> StripeAnswer:
        """One stream call with `session`, counted in `report`."""
        answer = self._stream.post(session.token, body, timeout)
        report.calls += 1
        if answer.status:
            report.latencies_ms.append(answer.elapsed * 1000)
        if answer.kind is Kind.RATE_LIMITED:
            report.rate_limited_calls += 1
        return answer

    def _rate_limited_delay(self, throttled: int, answer: StripeAnswer) -> float:
        """Retry-After when Stripe gives one, else exponential backoff up to a few seconds;
        plus full jitter either way, so that calls refused together do not return together."""
        policy = self._policy
        ceiling = min(RATE_LIMIT_BACKOFF_CAP, policy.base_delay * 2 ** (throttled - 1))
        spread = self._jitter(0.0, ceiling)
        return spread if answer.retry_after is None else answer.retry_after + spread


class DeliveryRun[T: Hashable]:
    """Events added one by one; a call leaves for every 100 of them; `finish()` waits for all."""

    def __init__(self, delivery: StreamDelivery, remaining: Callable[[], float]) -> None:
        self._delivery = delivery
        self._remaining = remaining
        self._events: list[MeterEvent] = []
        self._tags: list[T] = []
        self._chunks: list[tuple[range, Future[CallReport]]] = []
        self._unsent_from = 0

    @property
    def events(self) -> Sequence[MeterEvent]:
        """Every event added, in order."""
        return self._events

    def add(self, event: MeterEvent, tag: T) -> int:
        """Queue one event; the report answers for it by `tag`. Returns its position."""
        self._events.append(event)
        self._tags.append(tag)
        if len(self._events) - self._unsent_from == MAX_EVENTS_PER_CALL:
            self._submit(len(self._events))
        return len(self._events) - 1

    def extend(self, events: Sequence[MeterEvent], tags: Iterable[T]) -> None:
        """Queue several events (an envelope's) in order, the report answering for each by
        its tag: `add` for each, in C loops."""
        tags = list(tags)
        if len(tags) != len(events):
            raise ValueError("an event without its tag, or a tag without its event")
        self._events.extend(events)
        self._tags.extend(tags)
        while len(self._events) - self._unsent_from >= MAX_EVENTS_PER_CALL:
            self._submit(self._unsent_from + MAX_EVENTS_PER_CALL)

    def tag_at(self, position: int) -> T:
        return self._tags[position]

    def _submit(self, end: int) -> None:
        """A call for the events from the first unsent one up to `end`."""
        chunk = range(self._unsent_from, end)
        self._unsent_from = end
        future = self._delivery.submit_chunk(chunk, self._events, self._remaining)
        self._chunks.append((chunk, future))

    def finish(self, stop_at: float = 0.0) -> DeliveryReport[T]:
        """Wait for every call, but not once only `stop_at` seconds are left before the
        deadline: a call still unanswered then (an answer trickling in byte by byte outlasts
        any socket timeout) is abandoned, and its events are reported for retry."""
        if self._unsent_from < len(self._events):
            self._submit(len(self._events))
        calls = CallReport()
        futures = [future for _, future in self._chunks]
        _, late = wait_for(futures, timeout=max(0.0, self._remaining() - stop_at))
        if late:
            logger.error("%d stream calls unanswered at the deadline; retried later", len(late))
            self._delivery.abandon(list(late))
        for chunk, future in self._chunks:
            if future in late:
                calls.late_chunks += 1
                calls.give_up(chunk, "deadline")
                continue
            try:
                calls.merge(future.result())
            except Exception as error:
                # by type only: an exception's text can quote a request, headers and all
                logger.error(
                    "delivery of a chunk failed unexpectedly (%s); it will be retried",
                    type(error).__name__,
                )
                calls.give_up(chunk, "internal_error")
        tags = self._tags
        return DeliveryReport(
            rejected={tags[p]: rejection for p, rejection in calls.rejected.items()},
            refused_events={tags[p]: self._events[p] for p in calls.rejected},
            retry={tags[p] for p in calls.retry},
            calls=calls,
            _events=self._events,
            _tags=tags,
        )


def _unavailable_reason(error: SessionUnavailable) -> str:
    return (
        "session_mode_mismatch" if isinstance(error, SessionModeMismatch) else "session_unavailable"
    )


def _rejection(answer: StripeAnswer) -> Rejection:
    if answer.kind is Kind.TOO_LARGE:
        return Rejection(
            ErrorCode.REQUEST_TOO_LARGE,
            f"HTTP 413: the event alone is too large for a gateway on the way to Stripe "
            f"({answer.message or 'no reason given'})",
        )
    return Rejection(
        answer_code(answer), answer.message or "Stripe rejected the event", error_param(answer)
    )
