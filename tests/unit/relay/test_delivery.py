"""Stream delivery without a network: chunking, retries, splits, sessions and the deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from meter_relay.config import RetryPolicy
from meter_relay.delivery import AdaptiveLimit, DeliveryRun, StreamDelivery
from meter_relay.events import MeterEvent
from meter_relay.session import MeterEventSession, SessionStore, SessionTokenSource
from meter_relay.stripe_client import Kind, MeterEventStream, StripeAnswer, StripeHttp

OK = StripeAnswer(Kind.OK, 200, body={})
Answer = Callable[[str, Sequence[MeterEvent]], StripeAnswer]


def event(identifier: str) -> MeterEvent:
    return MeterEvent(
        "api_requests",
        {"stripe_customer_id": "cus_1", "value": "1"},
        identifier,
        "2026-12-01T10:00:00.000Z",
    )


def error(status: int, code: str, param: str | None = None, **fields: Any) -> StripeAnswer:
    kind = {400: Kind.REJECTED, 401: Kind.SESSION_EXPIRED, 429: Kind.RATE_LIMITED}.get(
        status, Kind.TRANSIENT
    )
    body: dict[str, Any] = {"error": {"code": code, "message": f"{code} happened"}}
    if param:
        body["error"]["param"] = param
    return StripeAnswer(kind, status, code, f"{code} happened", body=body, **fields)


class FakeStream:
    """Answers each call with `answer(token, events)`; records what was sent. A call's body is
    a handle on its events (the delivery makes a part's body once and posts it)."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str], float]] = []
        self._events: dict[bytes, list[MeterEvent]] = {}
        self._lock = threading.Lock()

    def body(self, events: Sequence[MeterEvent]) -> bytes:
        with self._lock:
            handle = b"body-%d" % len(self._events)
            self._events[handle] = list(events)
        return handle

    def post(self, token: str, body: bytes, timeout: float) -> StripeAnswer:
        events = self._events[body]
        self.calls.append((token, [e.identifier for e in events], timeout))
        return MeterEventStream.blame(self.answer(token, events))


class FakeStore:
    def __init__(self) -> None:
        self.serial = 0

    def read(self) -> MeterEventSession:
        self.serial += 1  # every read finds a newer session (the refresher renews it)
        return MeterEventSession(
            f"mtres_{self.serial}",
            datetime(2100, 1, 1, tzinfo=UTC),
            f"token_{self.serial}",
            livemode=False,
        )


def delivery(
    answer: Answer, policy: RetryPolicy | None = None
) -> tuple[StreamDelivery, FakeStream, list[float]]:
    stream = FakeStream(answer)
    sleeps: list[float] = []
    tokens = SessionTokenSource(cast("SessionStore", FakeStore()), None)
    run = StreamDelivery(
        cast("MeterEventStream", stream),
        tokens,
        policy or RetryPolicy(),
        ThreadPoolExecutor(4),
        sleep=sleeps.append,
        jitter=lambda low, high: high,
    )
    return run, stream, sleeps


def plenty() -> float:
    return 600.0


def test_events_go_out_once_in_calls_of_at_most_100() -> None:
    run, stream, _ = delivery(lambda token, events: OK)
    report = run.deliver([event(f"e{i}") for i in range(250)], plenty)
    assert report.delivered == set(range(250))
    assert sorted(len(ids) for _, ids, _ in stream.calls) == [50, 100, 100]
    sent = [i for _, ids, _ in stream.calls for i in ids]
    assert sorted(sent) == sorted(f"e{i}" for i in range(250))  # none twice, none missing


def test_events_added_in_groups_go_out_in_calls_of_100_answered_by_their_tags() -> None:
    """An envelope's events are added at once (`extend`), between single ones: the calls still
    take 100 events each, in order, and the report answers by each event's own tag."""
    delivery_, stream, _ = delivery(lambda token, events: OK)
    run: DeliveryRun[tuple[str, int]] = delivery_.start(plenty)
    run.add(event("single-0"), ("single", 0))
    run.extend([event(f"env-{i}") for i in range(150)], [("env", i) for i in range(150)])
    run.add(event("single-1"), ("single", 1))
    run.extend([event(f"more-{i}") for i in range(60)], [("more", i) for i in range(60)])
    report = run.finish()
    envelope = [f"env-{i}" for i in range(150)]
    more = [f"more-{i}" for i in range(60)]
    expected_calls = [
        ["single-0", *envelope[:99]],
        [*envelope[99:], "single-1", *more[:48]],
        more[48:],
    ]
    assert sorted(ids for _, ids, _ in stream.calls) == sorted(expected_calls)
    assert report.delivered == (
        {("single", 0), ("single", 1)}
        | {("env", i) for i in range(150)}
        | {("more", i) for i in range(60)}
    )


def test_events_and_tags_added_in_groups_must_pair_up_and_leave_nothing_behind() -> None:
    delivery_, stream, _ = delivery(lambda token, events: OK)
    run: DeliveryRun[tuple[str, int]] = delivery_.start(plenty)
    with pytest.raises(ValueError, match="without its tag"):
        run.extend([event("a"), event("b")], [("m", 0)])
    run.add(event("c"), ("n", 0))
    report = run.finish()
    assert [ids for _, ids, _ in stream.calls] == [["c"]]
    assert report.delivered == {("n", 0)}


def test_a_rate_limit_waits_for_retry_after_plus_jitter() -> None:
    answers = iter([error(429, "account_rate_limit_exceeded", retry_after=2.0), OK])
    run, _, sleeps = delivery(lambda token, events: next(answers))
    report = run.deliver([event("a")], plenty)
    assert report.delivered == {0}
    assert sleeps == [2.0 + 0.2]  # Retry-After, plus the jitter of a first retry
    assert report.calls.rate_limited_calls == 1
    assert report.calls.retried_calls == 1


def test_a_rate_limit_without_retry_after_backs_off_then_succeeds() -> None:
    answers = iter([error(429, "account_rate_limit_exceeded"), OK])
    run, _, sleeps = delivery(lambda token, events: next(answers))
    report = run.deliver([event("a")], plenty)
    assert report.delivered == {0}
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= 5.0  # backoff, capped: no Retry-After to wait for
    assert report.calls.rate_limited_calls == 1


def test_a_409_on_the_stream_is_retried_as_passing() -> None:
    """Stripe's 409 (concurrent requests for one customer and meter) says: try again."""
    answers = iter([StripeAnswer(Kind.TRANSIENT, 409, "too_many_concurrent_requests"), OK])
    run, stream, _ = delivery(lambda token, events: next(answers))
    report = run.deliver([event("a"), event("b")], plenty)
    assert (report.delivered, report.rejected, report.retry) == ({0, 1}, {}, set())
    assert len(stream.calls) == 2


@pytest.mark.parametrize("status", [403, 404])
def test_a_403_or_404_on_the_stream_returns_the_events_unsplit(status: int) -> None:
    """A key without the permission, a wrong base URL: the setup's fault, not the events'.
    They go back to SQS (retried there, then SQS's own DLQ), none dead-lettered here."""
    refused = StripeAnswer(Kind.FAILED, status, "resource_missing", body={"error": {}})
    run, stream, _ = delivery(lambda token, events: refused)
    report = run.deliver([event(f"e{i}") for i in range(5)], plenty)
    assert (report.delivered, report.rejected, report.retry) == (set(), {}, set(range(5)))
    assert len(stream.calls) == 1


def test_server_errors_are_retried_with_growing_backoff_then_given_up() -> None:
    run, stream, sleeps = delivery(lambda token, events: error(503, "unavailable"))
    report = run.deliver([event("a"), event("b")], plenty)
    assert report.retry == {0, 1}
    assert report.calls.retry_reasons == {"transient": 2}
    attempts = RetryPolicy().max_attempts
    assert len(stream.calls) == attempts
    assert sleeps == [min(5.0, 0.2 * 2**n) for n in range(attempts - 1)]  # full jitter's top


def test_a_rejected_call_is_split_down_to_the_events_stripe_refuses() -> None:
    def answer(token: str, events: Sequence[MeterEvent]) -> StripeAnswer:
        bad = [i for i, e in enumerate(events) if e.identifier.startswith("bad")]
        return error(400, "parameter_invalid", f"events[{bad[0]}].payload") if bad else OK

    run, stream, _ = delivery(answer)
    identifiers = ["ok0", "bad1", "ok2", "ok3", "ok4", "bad5", "ok6", "ok7"]
    report = run.deliver([event(i) for i in identifiers], plenty)
    assert set(report.rejected) == {1, 5}
    assert report.rejected[1].code == "parameter_invalid"
    assert report.delivered == {0, 2, 3, 4, 6, 7}
    assert report.calls.split_calls >= 2
    delivered_ids = [i for _, ids, _ in stream.calls for i in ids if not i.startswith("bad")]
    assert len(delivered_ids) >= 6


def test_a_call_refused_for_a_parameter_outside_the_events_is_not_split() -> None:
    # e.g. a Stripe-Version Stripe no longer takes: splitting would dead-letter every event
    run, stream, _ = delivery(lambda token, events: error(400, "invalid_version", "version"))
    report = run.deliver([event(f"e{i}") for i in range(10)], plenty)
    assert report.rejected == {}
    assert report.retry == set(range(10))
    assert report.calls.retry_reasons == {"http_400": 10}
    assert len(stream.calls) == 1


@pytest.mark.parametrize(
    ("param", "kind"),
    [
        ("version", Kind.FAILED),
        ("Stripe-Version", Kind.FAILED),
        ("events[3].payload.value", Kind.REJECTED),
        ("events", Kind.REJECTED),
        (None, Kind.REJECTED),  # Stripe's v2 errors need not name one: the events', then
    ],
)
def test_the_stream_blames_the_events_only_for_their_own_parameters(
    param: str | None, kind: Kind
) -> None:
    class Http:
        def post_pooled(self, *args: Any) -> StripeAnswer:
            return answer

    answer = error(400, "parameter_invalid", param)
    stream = MeterEventStream(cast("StripeHttp", Http()))
    assert stream.send("token", [], 1.0).kind is kind


@pytest.mark.parametrize(
    "body",
    [None, {"error": "flat"}, {"error": {"code": 42}}, {"message": "blocked by policy"}],
    ids=["not JSON (a proxy's page)", "flat", "code not text", "no error"],
)
def test_a_400_that_is_not_stripes_answer_is_retried_not_blamed_on_the_events(
    body: dict[str, Any] | None,
) -> None:
    """A proxy or firewall between the forwarder and Stripe refusing the call says nothing of
    the events: split, every one would be dead-lettered as http_400."""
    refused = StripeAnswer(Kind.REJECTED, 400, None, "Bad Request", body=body)
    run, stream, _ = delivery(lambda token, events: refused)
    report = run.deliver([event(f"e{i}") for i in range(10)], plenty)
    assert (report.rejected, report.retry) == ({}, set(range(10)))
    assert len(stream.calls) == 1


def test_a_stripe_400_whose_code_is_null_is_still_the_events() -> None:
    """Stripe's error `code` may be null; its `type` is always there: still Stripe's answer."""
    body = {"error": {"type": "invalid_request_error", "code": None, "message": "bad event"}}
    refused = StripeAnswer(Kind.REJECTED, 400, None, "bad event", body=body)

    class Http:
        def post_pooled(self, *args: Any) -> StripeAnswer:
            return refused

    stream = MeterEventStream(cast("StripeHttp", Http()))
    assert stream.send("token", [], 1.0).kind is Kind.REJECTED


def test_an_expired_session_is_replaced_and_the_call_sent_again() -> None:
    def answer(token: str, events: Sequence[MeterEvent]) -> StripeAnswer:
        if token == "token_1":
            return error(401, "billing_meter_event_session_expired")
        return OK

    run, stream, _ = delivery(answer)
    report = run.deliver([event("a")], plenty)
    assert report.delivered == {0}
    assert [token for token, _, _ in stream.calls] == ["token_1", "token_2"]
    assert report.calls.session_renewals == 1


def test_a_session_refused_again_and_again_is_given_up() -> None:
    run, stream, _ = delivery(
        lambda token, events: error(401, "billing_meter_event_session_expired")
    )
    report = run.deliver([event("a")], plenty)
    assert report.retry == {0}
    assert report.calls.retry_reasons == {"session_refused": 1}
    assert len(stream.calls) == 3  # the first token and two renewals


def test_nothing_is_sent_within_the_deadline_margin() -> None:
    run, stream, _ = delivery(lambda token, events: OK)
    report = run.deliver([event("a")], lambda: RetryPolicy().deadline_margin + 0.1)
    assert stream.calls == []
    assert report.retry == {0}
    assert report.calls.retry_reasons == {"deadline": 1}


def test_a_backoff_that_would_pass_the_deadline_is_not_waited() -> None:
    left = [20.0]
    run, stream, sleeps = delivery(
        lambda token, events: error(429, "account_rate_limit_exceeded", retry_after=30.0)
    )
    report = run.deliver([event("a")], lambda: left[0])
    assert sleeps == []  # 30 s of Retry-After does not fit in 20 s
    assert report.calls.retry_reasons == {"rate_limited": 1}
    assert len(stream.calls) == 1


@pytest.mark.parametrize("left", [5.0, 8.0, 30.0])
def test_a_call_never_gets_more_time_than_is_left(left: float) -> None:
    run, stream, _ = delivery(lambda token, events: OK)
    run.deliver([event("a")], lambda: left)
    policy = RetryPolicy()
    assert stream.calls[0][2] == min(policy.request_timeout, left - policy.deadline_margin)


def test_429s_are_retried_while_the_deadline_allows_not_counted_as_attempts() -> None:
    """Three 429s, two 500s and a 503, then success, with plenty of time: 429 means "slow
    down", so it does not use the budget of attempts that 5xx answers have."""
    answers = iter(
        [error(429, "account_rate_limit_exceeded", retry_after=0.0)] * 3
        + [error(500, "internal"), error(500, "internal"), error(503, "unavailable"), OK]
    )
    run, stream, _ = delivery(lambda token, events: next(answers), RetryPolicy(max_attempts=4))
    report = run.deliver([event("a")], plenty)
    assert report.delivered == {0}
    assert len(stream.calls) == 7
    assert report.calls.rate_limited_calls == 3


def test_a_429_storm_is_retried_until_the_deadline_then_returned() -> None:
    clock = [60.0]

    def answer(token: str, events: Sequence[MeterEvent]) -> StripeAnswer:
        clock[0] -= 1.0  # each call takes a second of the invocation
        return error(429, "account_rate_limit_exceeded", retry_after=1.0)

    run, stream, sleeps = delivery(answer, RetryPolicy(max_attempts=2))
    report = run.deliver([event("a")], lambda: clock[0] - sum(sleeps))
    assert report.retry == {0}
    assert report.calls.retry_reasons == {"rate_limited": 1}
    assert len(stream.calls) > 10  # far beyond max_attempts: the time left decided
    assert all(delay >= 1.0 for delay in sleeps)  # Retry-After honoured
    assert clock[0] - sum(sleeps) >= RetryPolicy().deadline_margin


def test_the_calls_in_flight_halve_on_429_and_grow_back_on_success() -> None:
    now = [0.0]
    limit = AdaptiveLimit(8, cooldown=0.5, clock=lambda: now[0])
    for _ in range(3):  # answers of calls already in flight together: one signal
        assert limit.acquire(0)
        limit.release(rate_limited=True)
    assert limit.limit == 4
    now[0] = 1.0
    assert limit.acquire(0)
    limit.release(rate_limited=True)
    assert limit.limit == 2
    for _ in range(20):
        assert limit.acquire(0)
        limit.release(rate_limited=False)
    assert 2 < limit.limit <= 8
    for _ in range(500):
        assert limit.acquire(0)
        limit.release(rate_limited=False)
    assert limit.limit == 8


def test_no_more_calls_than_the_limit_are_in_flight() -> None:
    limit = AdaptiveLimit(2)
    assert limit.acquire(0)
    assert limit.acquire(0)
    assert not limit.acquire(0.05)  # a third waits, and gives up when its time is out
    limit.release(rate_limited=False)
    assert limit.acquire(0)


class BodiesHttp:
    """Stripe's answers by call: the first call of events 0-99 too large for a gateway, the
    first of 100-199 a 500; the rest OK. Keeps each body answered OK."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.accepted: list[bytes] = []

    def post_pooled(self, path: str, credential: str, data: bytes, timeout: float) -> StripeAnswer:
        first = data[data.index(b'"identifier":"') + 14 :].split(b'"', 1)[0].decode()
        count = data.count(b'"identifier"')
        if first == "e0" and count == 100 and "too large" not in self.refused:
            self.refused.add("too large")
            return StripeAnswer(Kind.TOO_LARGE, 413)
        if first == "e100" and "500" not in self.refused:
            self.refused.add("500")
            return StripeAnswer(Kind.TRANSIENT, 500)
        self.accepted.append(data)
        return OK


class CountingStream(MeterEventStream):
    def __init__(self, http: BodiesHttp) -> None:
        super().__init__(cast("StripeHttp", http))
        self.bodies_made = 0

    def body(self, events: Sequence[MeterEvent]) -> bytes:
        self.bodies_made += 1
        return super().body(events)


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "no-ledger"])
def test_with_the_ledger_each_delivered_calls_body_is_kept_as_sent(ledger: bool) -> None:
    """A call split in two keeps its halves' bodies, a call sent again keeps the body made
    once; without the ledger, no body is kept. Either way a body is made once a call: the
    chunks and the halves, none for the retry."""
    http = BodiesHttp()
    stream = CountingStream(http)
    run = StreamDelivery(
        stream,
        SessionTokenSource(cast("SessionStore", FakeStore()), None),
        RetryPolicy(),
        ThreadPoolExecutor(4),
        keep_bodies=ledger,
        sleep=lambda _: None,
        jitter=lambda low, high: high,
    )
    report = run.deliver([event(f"e{i}") for i in range(250)], plenty)

    assert report.delivered == set(range(250))
    assert report.calls.split_calls == 1
    assert stream.bodies_made == 5
    if not ledger:
        assert report.calls.bodies == []
        assert report.delivered_bodies() is None
        return
    calls = report.delivered_bodies()
    assert calls is not None
    assert [part for part, _ in calls] == [
        range(0, 50),
        range(50, 100),
        range(100, 200),
        range(200, 250),
    ]
    assert sorted(body for _, body in calls) == sorted(http.accepted)
    for part, body in calls:
        assert body == stream.body([event(f"e{i}") for i in part])


def test_no_call_bodies_are_given_when_some_events_were_not_delivered() -> None:
    http = BodiesHttp()
    http.refused.add("too large")
    stream = CountingStream(http)
    run = StreamDelivery(
        stream,
        SessionTokenSource(cast("SessionStore", FakeStore()), None),
        RetryPolicy(max_attempts=1),
        ThreadPoolExecutor(4),
        keep_bodies=True,
        sleep=lambda _: None,
        jitter=lambda low, high: high,
    )
    report = run.deliver([event(f"e{i}") for i in range(250)], plenty)
    assert report.retry == set(range(100, 200))  # the 500, not sent again: for the queue
    assert report.delivered_bodies() is None


def test_a_call_after_a_slow_session_renewal_still_ends_before_the_deadline_margin() -> None:
    """The call's timeout is set after the session is had: a renewal that waited on SSM (or
    the refresher) must not leave the call a timeout reckoned from before it."""
    left = [8.0]

    class SlowStore(FakeStore):
        def read(self) -> MeterEventSession:
            left[0] -= 4.0  # SSM took four seconds to answer
            return super().read()

    stream = FakeStream(lambda token, events: OK)
    tokens = SessionTokenSource(cast("SessionStore", SlowStore()), None)
    run = StreamDelivery(
        cast("MeterEventStream", stream),
        tokens,
        RetryPolicy(),
        ThreadPoolExecutor(1),
        sleep=lambda seconds: None,
    )
    run.deliver([event("e1")], lambda: left[0])
    [(_, _, timeout)] = stream.calls
    assert timeout <= left[0] - RetryPolicy().deadline_margin  # 4 s left, 3 s of margin: 1 s
