"""The DLQ reader's pass: it takes each message once, gives back what it holds (also when it
ends early or fails), keeps holds alive while it runs, and never holds more than it may: SQS
answers a long poll with nothing past its in-flight limit (FakeSqs keeps that limit, moto does
not), which a pass that held everything took for the end of the queue, silently."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Any

import pytest
from botocore.exceptions import ClientError

from meter_relay.cli import main
from meter_relay.dlq.scan import SCAN_HOLD_SECONDS, SCAN_IDLE_RECEIVES, WhenFull
from meter_relay.dlq.toolkit import Toolkit
from tests.fakes import ClockedQueue, FakeClock, FakeSqs, RepeatingSqs, StubSqs, api_messages
from tests.unit.relay.dlq.builders import DLQ_URL, reader


def test_a_full_scan_gives_back_all_but_what_was_deleted() -> None:
    sqs = StubSqs([api_messages("a", "b"), api_messages("c", "a")])  # "a" comes twice
    dlq_reader = reader(sqs)
    seen = []
    with closing(dlq_reader.scan(hold=30)) as scan:
        for message in scan:
            seen.append(message.message_id)
            if message.message_id == "b":
                assert dlq_reader.delete([message]) == {}
    assert seen == ["a", "b", "c"]
    assert ("receive", 30) in sqs.calls
    assert sorted(sqs.released()) == ["rh-a", "rh-c"]  # "a" too, received twice
    assert (dlq_reader.stats.seen, dlq_reader.stats.depth) == (3, 3)
    assert dlq_reader.stats.shortfall(dlq_reader.max_held) is None


def test_a_scan_closed_early_gives_back_the_rest_of_what_it_received() -> None:
    sqs = StubSqs([api_messages("a", "b", "c")])
    with closing(reader(sqs).scan()) as scan:
        first = next(scan)
    assert first.message_id == "a"
    assert sorted(sqs.released()) == ["rh-a", "rh-b", "rh-c"]
    assert {c for c in sqs.calls if c[0] == "receive"} == {("receive", SCAN_HOLD_SECONDS)}


def test_a_scan_interrupted_by_an_error_gives_everything_back() -> None:
    sqs = StubSqs([api_messages(*(f"m{n}" for n in range(12)))])

    def fail_on_the_second() -> None:
        with closing(reader(sqs).scan()) as scan:
            for message in scan:
                if message.message_id == "m1":
                    raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_on_the_second()
    assert sorted(sqs.released()) == sorted(f"rh-m{n}" for n in range(12))
    releases = [c for c in sqs.calls if c[0] == "release"]
    assert [len(c[1]) for c in releases] == [10, 2]  # batches of 10 at most


def test_a_scan_of_a_queue_it_cannot_read_within_one_hold_ends_after_one_pass() -> None:
    """Receiving 30 messages takes longer than the hold: what the scan saw first would show
    again and keep the receives coming; it is hidden again instead, and the pass ends."""
    clock = FakeClock()
    queue = ClockedQueue(clock, 30, receive_seconds=1.0)
    dlq_reader = reader(queue, clock=clock.monotonic)
    with closing(dlq_reader.scan(hold=2)) as scan:
        seen = [message.message_id for message in scan]
    assert sorted(seen) == sorted(queue.visible_at)  # each once
    assert all(at <= clock.now for at in queue.visible_at.values())  # all given back


@pytest.mark.parametrize(
    ("count", "receives"),
    [(2, 2), (5, 1 + SCAN_IDLE_RECEIVES)],  # the count, else a few receives, bound it
    ids=["count-reached", "count-not-reached"],
)
def test_a_scan_ends_when_only_messages_seen_already_come_back(count: int, receives: int) -> None:
    sqs = RepeatingSqs(["a", "b"], count)
    with closing(reader(sqs).scan()) as scan:
        seen = [message.message_id for message in scan]
    assert seen == ["a", "b"]
    assert sqs.receives == receives


def test_a_slow_pass_deletes_with_a_handle_that_is_still_current() -> None:
    """Each message takes 4 s and another reader receives meanwhile: a message whose hold
    lapsed would be taken by it, and the delete's handle would be stale."""
    clock = FakeClock()
    queue = ClockedQueue(clock, 12)
    dlq_reader = reader(queue, clock=clock.monotonic)
    seen = []
    with closing(dlq_reader.scan(hold=10)) as scan:
        for message in scan:
            seen.append(message.message_id)
            clock.now += 4
            queue.receive_message(MaxNumberOfMessages=10, VisibilityTimeout=0)  # someone else
            assert dlq_reader.delete([message]) == {}
    assert sorted(seen) == [f"m{n:02}" for n in range(12)]
    assert queue.stale == 0
    assert queue.visible_at == {}  # every delete took


def test_a_delete_that_sqs_refuses_is_reported_not_raised_and_given_back() -> None:
    sqs = StubSqs([api_messages("a", "b")])
    sqs.fail_delete = True
    dlq_reader = reader(sqs)
    with closing(dlq_reader.windows(size=10)) as windows:
        window = next(windows)
        failed = dlq_reader.delete(window)
        assert sqs.released() == []
    assert set(failed) == {"a", "b"}
    assert all("InternalError" in why for why in failed.values())
    assert sorted(sqs.released()) == ["rh-a", "rh-b"]  # still held, so given back at the end


# ----- SQS's in-flight limit -------------------------------------------------------------------


def limited_queue(count: int, limit: int) -> FakeSqs:
    sqs = FakeSqs(in_flight_limit=limit)
    sqs.create_queue(DLQ_URL)
    for n in range(count):
        body = {"event_name": "api_requests", "identifier": f"e-{n}", "payload": {}}
        sqs.put(DLQ_URL, json.dumps(body))
    return sqs


def test_a_pass_that_holds_past_the_limit_is_answered_empty_and_says_so() -> None:
    """The reader before windows held all it read: at SQS's limit a long poll answers empty,
    and the pass ended as if the queue were done (it saw 50 of 120 and said nothing). Allowed
    to hold more than the limit, the reader now notices, and says how much it saw."""
    sqs = limited_queue(120, limit=50)
    dlq_reader = reader(sqs, max_held=1_000, in_flight_limit=50)
    with closing(dlq_reader.scan()) as scan:
        seen = sum(1 for _ in scan)
    assert (seen, sqs.empty_at_limit) == (50, 1)
    stats = dlq_reader.stats
    assert (stats.seen, stats.depth, stats.unseen, stats.at_limit) == (50, 120, 70, True)
    shortfall = stats.shortfall(dlq_reader.max_held)
    assert shortfall is not None
    assert shortfall.startswith("seen 50 of ~120 messages")
    assert "in-flight limit" in shortfall
    assert sqs.in_flight(DLQ_URL) == 0  # all given back


@pytest.mark.parametrize("output", ["table", "json"])
def test_dlq_list_says_it_saw_less_than_the_queue_holds_and_exits_1(
    output: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the operator sees of the shortfall: the CLI over a queue at its in-flight limit."""
    sqs = limited_queue(120, limit=50)
    monkeypatch.setattr(
        Toolkit, "reader", lambda _kit: reader(sqs, max_held=1_000, in_flight_limit=50)
    )
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", DLQ_URL)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    code = main(["--output", output, "dlq", "list"])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.startswith("warning: seen 50 of ~120 messages")
    assert err.endswith(": the counts above are of what was seen\n")
    if output == "json":
        document = json.loads(out)
        assert (document["complete"], document["messages"]) == (False, 50)
        assert document["shortfall"] in err
    else:
        assert "read 50 of ~120 messages in the DLQ\n" in out
    assert sqs.in_flight(DLQ_URL) == 0


def test_a_read_only_pass_stops_at_what_it_may_hold_and_says_how_much_it_saw() -> None:
    sqs = limited_queue(120, limit=50)
    dlq_reader = reader(sqs, max_held=40)
    with closing(dlq_reader.scan(when_full=WhenFull.STOP)) as scan:
        seen = sum(1 for _ in scan)
    assert seen == 40
    assert sqs.empty_at_limit == 0  # it never asked past the limit
    assert sqs.peak_in_flight == 40
    stats = dlq_reader.stats
    assert (stats.full, stats.unseen) == (True, 80)
    assert "a read-only pass holds at most 40 messages" in str(stats.shortfall(40))
    assert sqs.in_flight(DLQ_URL) == 0


def test_a_consuming_pass_deletes_as_it_goes_and_sees_the_whole_queue() -> None:
    sqs = limited_queue(300, limit=50)
    dlq_reader = reader(sqs, max_held=40)
    seen, kept = 0, 0
    with closing(dlq_reader.windows(size=20)) as windows:
        for window in windows:
            seen += len(window)
            settled = [m for m in window if int(str(m.events[0].identifier)[2:]) % 3]
            kept += len(window) - len(settled)
            assert dlq_reader.delete(settled) == {}
    assert (seen, dlq_reader.stats.seen) == (300, 300)
    assert kept == 100
    assert sqs.empty_at_limit == 0
    assert sqs.peak_in_flight <= 40
    assert dlq_reader.stats.released > 0  # what stayed was given back on the way
    assert dlq_reader.stats.shortfall(40) is None
    assert len(sqs.bodies(DLQ_URL)) == 100
    assert sqs.in_flight(DLQ_URL) == 0


class ShortPolling(FakeSqs):
    """A client that polls short, as a caller without WaitTimeSeconds would."""

    def receive_message(  # type: ignore[override]
        self, QueueUrl: str, **kwargs: Any
    ) -> dict[str, Any]:
        return super().receive_message(QueueUrl, **{**kwargs, "WaitTimeSeconds": 0})


def test_the_over_limit_error_of_a_short_poll_ends_the_pass_and_is_reported() -> None:
    sqs = ShortPolling(in_flight_limit=10)
    sqs.create_queue(DLQ_URL)
    for n in range(25):
        sqs.put(DLQ_URL, json.dumps({"event_name": "api_requests", "identifier": f"s-{n}"}))
    dlq_reader = reader(sqs, max_held=100, in_flight_limit=10)
    with closing(dlq_reader.scan()) as scan:
        assert sum(1 for _ in scan) == 10
    assert dlq_reader.stats.at_limit is True
    assert dlq_reader.stats.unseen == 15


def test_other_errors_of_a_receive_are_not_taken_for_the_limit() -> None:
    class Failing(FakeSqs):
        def receive_message(self, QueueUrl: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            raise ClientError({"Error": {"Code": "AccessDenied"}}, "ReceiveMessage")

    sqs = Failing()
    sqs.create_queue(DLQ_URL)
    with pytest.raises(ClientError), closing(reader(sqs).scan()) as scan:
        next(scan)
