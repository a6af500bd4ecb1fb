"""The DLQ reader: one pass over the queue, in windows, never past SQS's in-flight limit.

A pass hides what it receives (so that it takes each message once, and nobody else takes it
meanwhile) and renews those holds while it runs. SQS allows about 120,000 messages in flight
on a standard queue; past that, a long-polling receive answers empty, as if the queue were
drained, and a pass that held everything would end early without knowing it. So a pass holds
at most `max_held` messages: what a consuming pass settles it deletes as it goes, and when what
stays reaches the bound, a read-only pass stops there and a consuming one gives back what it
holds and goes on. Either way `stats` says how many messages the pass saw against the queue's
depth when it began, and what it could not see.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.dead_letter import DeadLetter, DeadLetterQueue
from meter_relay.dlq.reading import DlqMessage, read_message
from meter_relay.events import ValidationRules
from meter_relay.sqs_batches import MAX_BATCH_ENTRIES, in_tens

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

SCAN_HOLD_SECONDS = 120  # a pass hides what it receives this long, again and again while it runs
SCAN_IDLE_RECEIVES = 3  # receives in a row that bring nothing new end a pass, whatever the count
IDLE_RECEIVES_AFTER_RELEASE = 30  # the same once a pass gave messages back (they come again)
IN_FLIGHT_LIMIT = 120_000  # SQS's, on a standard queue: past it, receives bring nothing
MAX_HELD = 100_000  # what one pass may hold: under the limit, with room for other readers
WINDOW_MESSAGES = 100  # a consuming pass works on this many messages at a time
DELETERS = 8  # DeleteMessageBatch calls at once
OVER_LIMIT = "AWS.SimpleQueueService.OverLimit"  # a short poll at the in-flight limit


class WhenFull(StrEnum):
    """What a pass does once it holds `max_held` messages."""

    STOP = "stop"  # a read-only pass (list, show, cancel): stop, and say how much it saw
    RELEASE = "release"  # a consuming pass: give back what stays, go on (it may come again)


@dataclass
class ScanStats:
    """How much of the queue one pass saw."""

    depth: int = 0  # visible messages when the pass began (ApproximateNumberOfMessages)
    in_flight: int = 0  # hidden then (another reader holds them): a pass cannot see those
    seen: int = 0  # messages received, each once (not the letters the pass put in itself)
    full: bool = False  # a read-only pass stopped at `max_held`
    released: int = 0  # given back before the end to stay under the limit
    at_limit: bool = False  # SQS refused to hand out more (in-flight limit, others included)

    @property
    def unseen(self) -> int:
        """Messages the queue held when the pass began that it did not see (approximate: the
        count is SQS's, and others may add or delete meanwhile)."""
        return max(0, self.depth - self.seen)

    def shortfall(self, max_held: int) -> str | None:
        """What the pass could not see, in words (None: it saw the whole queue)."""
        if not (self.unseen or self.full or self.at_limit):
            return None
        why = []
        if self.full:
            why.append(f"a read-only pass holds at most {max_held:,} messages at once")
        if self.at_limit:
            why.append("SQS's in-flight limit was reached")
        if self.in_flight:
            why.append(f"{self.in_flight:,} were in flight (hidden by another reader)")
        if self.released:
            why.append(f"{self.released:,} were given back on the way and came again")
        reason = "; ".join(why) or "the queue's count is approximate"
        return f"seen {self.seen:,} of ~{self.depth:,} messages ({reason})"

    def to_json(self) -> dict[str, int | bool]:
        return {
            "seen": self.seen,
            "depth": self.depth,
            "unseen": self.unseen,
            "in_flight_at_start": self.in_flight,
            "released_early": self.released,
            "full": self.full,
            "at_limit": self.at_limit,
        }


class _Status(StrEnum):
    MORE = "more"
    END = "end"
    FULL = "full"


@dataclass
class _Pass:
    """What one pass keeps between receives."""

    seen: set[str] = field(default_factory=set)
    idle: int = 0
    idle_limit: int = SCAN_IDLE_RECEIVES


class DeadLetterReader:
    """Receives DLQ messages, holds them hidden while in use, deletes or gives them back.

    One pass at a time per reader; its counts are in `stats` once it ends."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        rules: ValidationRules,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_held: int = MAX_HELD,
        in_flight_limit: int = IN_FLIGHT_LIMIT,
    ) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.rules = rules
        self.max_held = max_held
        self.in_flight_limit = in_flight_limit
        self.stats = ScanStats()
        self._clock = clock
        self._hold = SCAN_HOLD_SECONDS
        # receipt handles held (received, not deleted, not given back) -> when the hold ends
        # (on the clock), in the order the holds end
        self._held: dict[str, float] = {}
        self._copies: set[str] = set()  # message ids of the letters this reader put in
        self._letters = DeadLetterQueue(queue_url, sqs)

    def count(self) -> tuple[int, int]:
        """The queue's approximate (visible, in flight) messages."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attributes.get("ApproximateNumberOfMessages", 0)),
            int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    def depth(self) -> int:
        """The queue's approximate number of visible messages."""
        return self.count()[0]

    def scan(
        self, hold: int = SCAN_HOLD_SECONDS, when_full: WhenFull = WhenFull.STOP
    ) -> Generator[DlqMessage]:
        """One pass, a message at a time (iterate it inside `contextlib.closing`)."""
        windows = self.windows(hold=hold, when_full=when_full, size=MAX_BATCH_ENTRIES)
        try:
            for window in windows:
                for message in window:
                    self.keep_hidden()
                    yield message
        finally:
            windows.close()

    def windows(
        self,
        *,
        hold: int = SCAN_HOLD_SECONDS,
        when_full: WhenFull = WhenFull.RELEASE,
        size: int = WINDOW_MESSAGES,
    ) -> Generator[list[DlqMessage]]:
        """One pass over the queue, up to `size` new messages at a time.

        What a receive brings is hidden for `hold` seconds and, for as long as the pass runs,
        hidden again before half of that is left (`keep_hidden`, which whoever works long on
        a window calls too): nobody else takes a message meanwhile, its receipt handle stays
        the one to delete it with, and receives bring only messages not seen yet. When the
        caller asks for the next window, what it did not delete of the last one stays held,
        until `max_held` are held: then a STOP pass ends and a RELEASE pass gives them back
        (they may come again: they are not taken twice, and no longer end the pass early).

        The pass ends when a receive comes back empty, or brings only messages seen already
        (or letters this reader put in) once it has seen as many as the queue held when it
        began, or SCAN_IDLE_RECEIVES times in a row whatever that count. When it ends
        (exhausted, closed early, or on an error: iterate it inside `contextlib.closing`),
        everything it holds is made visible again at once.
        """
        self._hold = hold
        visible, in_flight = self.count()
        self.stats = ScanStats(depth=visible, in_flight=in_flight)
        state = _Pass()
        size = min(size, self.max_held)
        try:
            while True:
                if when_full is WhenFull.RELEASE and len(self._held) + size > self.max_held:
                    self.stats.released += len(self._held)
                    self._change_visibility(list(self._held), 0)
                    self._held.clear()
                    state.idle_limit = IDLE_RECEIVES_AFTER_RELEASE
                window, status = self._fill(state, size)
                if window:
                    yield window
                if status is _Status.FULL:
                    self.stats.full = True
                    return
                if status is _Status.END:
                    return
        finally:
            self.stats.seen = len(state.seen)
            self._change_visibility(list(self._held), 0)
            self._held.clear()

    def _fill(self, state: _Pass, size: int) -> tuple[list[DlqMessage], _Status]:
        """Up to `size` new messages, and whether the pass goes on, is over, or holds all it
        may (a STOP pass: a RELEASE pass always has room for a window)."""
        window: list[DlqMessage] = []
        while len(window) < size:
            self.keep_hidden()
            room = self.max_held - len(self._held)
            if room <= 0:
                return window, _Status.FULL
            received = self._receive(min(MAX_BATCH_ENTRIES, size - len(window), room))
            if not received:
                return window, _Status.END
            fresh = [
                m
                for m in received
                if m["MessageId"] not in state.seen and m["MessageId"] not in self._copies
            ]  # a letter put in by this pass is not taken again (no loop)
            if self.stats.released:  # given back once: not held again when they come back
                stale = [m["ReceiptHandle"] for m in received if m not in fresh]
                self._change_visibility(stale, 0)
                for handle in stale:
                    self._held.pop(handle, None)
            if not fresh:
                state.idle += 1
                if len(state.seen) >= self.stats.depth or state.idle >= state.idle_limit:
                    return window, _Status.END  # round again: every message has been seen
                continue
            state.idle = 0
            for message in fresh:
                state.seen.add(message["MessageId"])
                window.append(read_message(message, self.rules))
        return window, _Status.MORE

    def _receive(self, count: int) -> list[MessageTypeDef]:
        """One receive; what it brings is held. Nothing, too, at the in-flight limit."""
        started = self._clock()
        try:
            received = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                VisibilityTimeout=self._hold,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=1,  # long polling asks every server: no false "empty"
            ).get("Messages", [])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != OVER_LIMIT:
                raise
            self.stats.at_limit = True
            return []
        if not received and self._near_limit():
            self.stats.at_limit = True
        self._held.update((m["ReceiptHandle"], started + self._hold) for m in received)
        return received

    def _near_limit(self) -> bool:
        """An empty long poll while messages are visible and nearly the limit is in flight:
        SQS's in-flight limit (a long poll at the limit answers empty, not an error)."""
        visible, in_flight = self.count()
        return visible > 0 and in_flight >= 0.9 * self.in_flight_limit

    def keep_hidden(self) -> None:
        """Hide again, for another hold, what this reader holds whose hold ends within half of
        one (handles SQS no longer knows are dropped: deleted by someone, or taken again)."""
        now = self._clock()
        due = []
        for handle, until in self._held.items():
            if until - now >= self._hold / 2:
                break  # the rest end later
            due.append(handle)
        if not due:
            return
        failed = self._change_visibility(due, self._hold)
        for handle in due:
            del self._held[handle]
            if handle not in failed:
                self._held[handle] = now + self._hold  # last: its hold ends last

    def release(self, messages: Iterable[DlqMessage]) -> None:
        """Make messages visible again now (a pass must not hide the DLQ from others)."""
        handles = [m.receipt_handle for m in messages]
        self._change_visibility(handles, 0)
        for handle in handles:
            self._held.pop(handle, None)

    def _change_visibility(self, handles: list[str], timeout: int) -> set[str]:
        """ChangeMessageVisibility in batches of 10; the handles it failed for."""
        failed: set[str] = set()
        for batch in in_tens(handles):
            response = self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": timeout}
                    for i, handle in enumerate(batch)
                ],
            )
            failed.update(batch[int(entry["Id"])] for entry in response.get("Failed", []))
        return failed

    def delete(self, messages: list[DlqMessage]) -> dict[str, str]:
        """DeleteMessageBatch in tens, several at once; the messages SQS did not delete (by
        id), each with why. Never raises: a call that fails leaves its messages undeleted."""
        failed: dict[str, str] = {}
        batches = list(in_tens(messages))
        with ThreadPoolExecutor(DELETERS, thread_name_prefix="dlq-delete") as pool:
            for refused in pool.map(self._delete_batch, batches):
                failed.update(refused)
        for message in messages:  # what stays is still held: given back when the pass ends
            if message.message_id not in failed:
                self._held.pop(message.receipt_handle, None)
        return failed

    def _delete_batch(self, batch: Sequence[DlqMessage]) -> dict[str, str]:
        try:
            response = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(batch)
                ],
            )
        except (BotoCoreError, ClientError) as error:
            return dict.fromkeys((m.message_id for m in batch), _said(error))
        return {
            batch[
                int(entry["Id"])
            ].message_id: f"{entry.get('Code', '')}: {entry.get('Message', '')}"
            for entry in response.get("Failed", [])
        }

    def put_letters(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Put letters in (several batches at once, as the forwarder does); the ones SQS did
        not take. What it took is not taken again by this reader's pass."""
        return self._letters.send(letters, confirmed=self._copies)


def _said(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
