"""The delivery ledger's bucket, for everything but the forwarder's hot path (ledger.py): the
records other parts add beside the delivered events, and reading objects back.

- `cancellations/dt=.../hour=.../<run>.jsonl.zst`: each adjustment `dlq cancel` made (the CLI's
  run, or the cancel function's invocation): identifier, event_name, adjustment id, Stripe's
  status, when.
- `events/dt=.../hour=.../sync-replay-<uuid>.jsonl.zst`: the events a `dlq replay --via sync`
  got counted at Stripe (a window of its messages), in the forwarder's format, its request id
  the object's name: they reached Stripe without the forwarder, which records its own.
- `rejections/dt=.../hour=.../<Stripe event id>.jsonl.zst`: each sample of a Stripe error
  report: identifier, Stripe's code and message, the report's event id and type, the meter and
  validation window, and when Stripe reported it (its event's `created`: a delivery after
  that, a replay, is one Stripe did not reject). Named after the Stripe event: a report
  retried within the hour rewrites the same object (a line twice changes no query's answer).

Dead-lettered events are not recorded: the DLQ itself says what is dead-lettered now (a letter
leaves it when replayed or discarded), and trace reads it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.events import MeterEvent, ValidationRules, compact_json, format_timestamp
from meter_relay.ledger import (
    CONTENT_TYPE,
    SUFFIX,
    WRITE_ATTEMPTS,
    LedgerLine,
    delivered_events,
    encode,
    line_of,
)
from meter_relay.ledger import decode as decode_events
from meter_relay.ledger_sql import CANCELLATIONS, EVENTS, REJECTIONS, Table
from meter_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

READERS = 8  # objects fetched at once


class CancellationLine(msgspec.Struct, omit_defaults=True):
    identifier: str
    event_name: str
    adjustment_id: str
    status: str  # Stripe's: pending, then complete
    cancelled_at: str


class RejectionLine(msgspec.Struct, omit_defaults=True):
    identifier: str
    code: str
    message: str
    stripe_event_id: str
    event_type: str
    reported_at: str
    meter_id: str | None = None
    validation_start: str | None = None
    validation_end: str | None = None


class LedgerUnavailable(Exception):
    """The ledger could not be written or read (the message says why; nothing secret)."""


def _failure(error: Exception) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{error.operation_name}: {details.get('Code', '')}: {details.get('Message', '')}"
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class LedgerBucket:
    """The ledger's objects in one bucket (under an optional prefix)."""

    bucket: str
    prefix: str
    s3: S3Client
    sleep: Callable[[float], None] = time.sleep

    def _base(self, table: Table) -> str:
        prefix = self.prefix.strip("/")
        return f"{prefix}/{table.name}/" if prefix else f"{table.name}/"

    def key(self, table: Table, written_at: datetime, name: str) -> str:
        at = written_at.astimezone(UTC)
        return f"{self._base(table)}dt={at:%Y-%m-%d}/hour={at:%H}/{name}{SUFFIX}"

    def put(
        self, table: Table, written_at: datetime, name: str, lines: Sequence[msgspec.Struct]
    ) -> str:
        """One object of lines (compressed JSON Lines, as the forwarder writes; delivered events
        as ledger.delivered_events groups them), tried a few times; its key, or
        LedgerUnavailable."""
        key = self.key(table, written_at, name)
        body = encode(lines)
        why = ""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE)
                return key
            except (BotoCoreError, ClientError) as error:
                why = _failure(error)
                if attempt + 1 < WRITE_ATTEMPTS:
                    self.sleep(0.2 * 2**attempt)
        raise LedgerUnavailable(f"s3://{self.bucket}/{key} was not written: {why}")

    def keys(
        self,
        table: Table,
        since: datetime,
        until: datetime,
        written_from: datetime | None = None,
    ) -> Iterator[str]:
        """The keys of the objects written from `since` to `until` (by their hour partition);
        `written_from`: only those S3 last modified then or later. A day is listed from its
        first hour wanted (StartAfter: S3 lists keys in order) up to its last."""
        first = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        last = until.astimezone(UTC)
        day = first.replace(hour=0)
        s3 = self.s3.get_paginator("list_objects_v2")
        try:
            while day <= last:
                prefix = f"{self._base(table)}dt={day:%Y-%m-%d}/"
                begin = max(first, day)
                pages = s3.paginate(
                    Bucket=self.bucket, Prefix=prefix, StartAfter=f"{prefix}hour={begin:%H}"
                )
                for item in (item for page in pages for item in page.get("Contents", [])):
                    hour = _hour(item["Key"][len(prefix) :])
                    if hour is None:
                        continue
                    if day.replace(hour=hour) > last:
                        break  # the later hours of the day follow: none is wanted
                    if written_from is None or item["LastModified"] >= written_from:
                        yield item["Key"]
                day += timedelta(days=1)
        except (BotoCoreError, ClientError) as error:
            raise LedgerUnavailable(f"s3://{self.bucket}: {_failure(error)}") from error

    def get(self, key: str) -> bytes:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise LedgerUnavailable(f"s3://{self.bucket}/{key}: {_failure(error)}") from error

    def fetch(
        self, keys: Sequence[str], into: Callable[[str, bytes], None], workers: int = READERS
    ) -> None:
        """Each object's bytes to `into(key, data)`, a few fetched at once."""
        if not keys:
            return
        with ThreadPoolExecutor(min(workers, len(keys)), thread_name_prefix="ledger") as pool:
            for key, data in zip(keys, pool.map(self.get, keys), strict=True):
                into(key, data)


def _hour(rest: str) -> int | None:
    """The hour of `hour=HH/<name>` (None: not a partition of ours)."""
    if not rest.startswith("hour=") or len(rest) < 8 or rest[7] != "/":
        return None
    text = rest[5:7]
    return int(text) if text.isdigit() and int(text) < 24 else None


# ----- what other parts record ------------------------------------------------------------------


def record_cancellations(
    ledger: LedgerBucket, run: str, lines: Sequence[CancellationLine], at: datetime | None = None
) -> str | None:
    """The adjustments of one run (the CLI's, an invocation's) as one object; its key (None:
    nothing to record). LedgerUnavailable when it could not be written."""
    if not lines:
        return None
    return ledger.put(CANCELLATIONS, at or datetime.now(UTC), run, lines)


def record_rejections(
    ledger: LedgerBucket,
    stripe_event_id: str,
    lines: Sequence[RejectionLine],
    at: datetime | None = None,
) -> str | None:
    """The samples of one error report as one object named after its Stripe event (a report
    processed again writes the same object); its key, None when no sample names an event."""
    if not lines:
        return None
    return ledger.put(REJECTIONS, at or datetime.now(UTC), stripe_event_id, lines)


SYNC_REPLAY = "sync-replay-"  # the name (and request id) of a sync replay's objects begins so


def record_sync_deliveries(
    ledger: LedgerBucket,
    rules: ValidationRules,
    delivered: Sequence[tuple[str, MeterEvent]],
    sent_from: datetime,
) -> str | None:
    """Events a sync replay got counted at Stripe, each with the SQS message it came from, as
    one object of the forwarder's lines (each event with its meter's payload keys): trace
    finds them, reconcile counts them, and a later replay knows Stripe has them. Delivered at
    `sent_from`, when their window's sends began, as the forwarder stamps its own (an error
    report on them comes later). Its key (None: nothing to record); LedgerUnavailable when it
    could not be written."""
    if not delivered:
        return None
    run, stamp = f"{SYNC_REPLAY}{uuid.uuid4()}", format_timestamp(sent_from)
    lines = [
        line_of(event, rules.keys_for(event.event_name), stamp, message_id, run)
        for message_id, event in delivered
    ]
    return ledger.put(EVENTS, datetime.now(UTC), run, delivered_events(lines))


# ----- bodies of reported events ----------------------------------------------------------------

# Stripe receives an event of a validation window inside it; the forwarder records it when the
# invocation's calls are done (its timeout at most, 15 minutes), in the hour it does.
RECORDED_AFTER = timedelta(minutes=15)
# The forwarder's ledger object is written before its invocation's deadline (the template's
# Timeout, 60 s): all Stripe received by the end of a validation window is in the ledger 60 s
# later, plus a margin for clocks. Stripe's windows last seconds, so a report can come while
# the invocation that sent its events is still at work (retrying 429s, say): until then, a
# body not found yet may still come.
SETTLED_AFTER = timedelta(seconds=75)
POLL_SECONDS = 2.0
# An object holding an event Stripe received in a window was written after the window began:
# older objects are not read (S3's clock and Stripe's may differ by this much).
CLOCKS = timedelta(minutes=1)


def event_body(line: LedgerLine) -> str:
    """The event as the forwarder sent it: its ledger line holds it as the call carried it."""
    return compact_json(msgspec.to_builtins(line.event))


class LedgerBodies:
    """The bodies of reported events, read from the ledger objects of the report's validation
    window (directly in S3: a window's objects, no query engine). While the forwarder may still
    be writing what Stripe received in the window (`settled_after` past its end), the objects
    written since are read again every few seconds, for at most `budget_seconds` in all; what
    is not found by then stays "body unknown" (an event not sent through the relay never is)."""

    def __init__(
        self,
        ledger: LedgerBucket,
        *,
        budget_seconds: float = 10.0,
        settled_after: timedelta = SETTLED_AFTER,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ledger = ledger
        self.budget_seconds = budget_seconds
        self.settled_after = settled_after
        self._clock = clock
        self._now = now
        self._sleep = sleep

    def bodies(
        self, identifiers: Sequence[str], start: datetime | None, end: datetime | None
    ) -> Mapping[str, str]:
        wanted = set(identifiers)
        if not wanted or start is None:
            return {}
        end = end or start
        until = end + RECORDED_AFTER
        deadline = self._clock() + self.budget_seconds
        found: dict[str, str] = {}
        lines: dict[str, LedgerLine] = {}
        read: set[str] = set()

        def take(key: str, data: bytes) -> None:
            read.add(key)
            for line in decode_events(data):
                if line.identifier in wanted and line.identifier not in lines:
                    lines[line.identifier] = line

        try:
            while True:
                since = start - CLOCKS
                written = self.ledger.keys(EVENTS, since, until, written_from=since)
                keys = [key for key in written if key not in read]
                for first in range(0, len(keys), READERS):
                    if self._clock() > deadline or len(lines) == len(wanted):
                        break
                    self.ledger.fetch(keys[first : first + READERS], take)
                if (
                    len(lines) == len(wanted)
                    or self._now() >= end + self.settled_after
                    or self._clock() + POLL_SECONDS > deadline
                ):
                    break
                self._sleep(POLL_SECONDS)  # the forwarder that sent them may be writing yet
            found = {identifier: event_body(line) for identifier, line in lines.items()}
        except (
            LedgerUnavailable,
            msgspec.DecodeError,
            OSError,
            BotoCoreError,
            ClientError,
        ) as error:
            logger.warning("ledger: reported events' bodies not read", extra={"why": str(error)})
        return found
