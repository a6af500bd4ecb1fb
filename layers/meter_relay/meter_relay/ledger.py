"""The delivery ledger: every event Stripe accepted, recorded in S3, to answer "what happened to
this event?" and "are Stripe's totals right?".

Each forwarder invocation writes the events it delivered as one gzip-compressed JSON Lines
object, `events/dt=YYYY-MM-DD/hour=HH/<invocation request id>.jsonl.gz` (the hour it delivered
them, UTC), one line per event: identifier, event_name, customer, value, the event's timestamp,
when it was delivered, the SQS message it came from and the invocation's request id, and the
payload's other keys when it has any. The write runs beside the dead letters, on a thread of its
own; a failed write is tried again within the deadline, and one that still fails never fails the
delivery: its events are counted (LedgerGap) for an alarm, since Stripe has them.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.events import MeterEvent, ValidationRules, format_timestamp
from meter_relay.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

EVENTS_PREFIX = "events"
WRITE_ATTEMPTS = 3
COMPRESS_LEVEL = 1  # the hot path's CPU: level 1 keeps most of the size (38 against 31 bytes)


class LedgerLine(msgspec.Struct, omit_defaults=True):
    """One delivered event, as the ledger's JSON Lines (and the Athena/DuckDB table) hold it."""

    identifier: str
    event_name: str
    customer: str
    value: str
    timestamp: str
    delivered_at: str
    message_id: str
    request_id: str
    dimensions: dict[str, str] | None = None  # the payload's keys beside customer and value


_ENCODER = msgspec.json.Encoder()
_LINES = msgspec.json.Decoder(LedgerLine)


def object_key(prefix: str, delivered_at: datetime, request_id: str) -> str:
    """Where an invocation's events go: partitioned by the UTC date and hour of delivery."""
    day, hour = delivered_at.strftime("%Y-%m-%d"), delivered_at.strftime("%H")
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return f"{base}{EVENTS_PREFIX}/dt={day}/hour={hour}/{request_id}.jsonl.gz"


def ledger_lines(
    delivered: Iterable[tuple[MeterEvent, str]],
    rules: ValidationRules,
    delivered_at: datetime,
    request_id: str,
) -> list[LedgerLine]:
    """The lines of events delivered, each with the SQS message id it came from."""
    at = format_timestamp(delivered_at)
    keys_for = rules.keys_for
    lines = []
    for event, message_id in delivered:
        keys = keys_for(event.event_name)
        payload = event.payload
        others = (
            {k: v for k, v in payload.items() if k not in (keys.customer_key, keys.value_key)}
            if len(payload) > 2
            else None
        )
        lines.append(
            LedgerLine(
                event.identifier,
                event.event_name,
                payload.get(keys.customer_key, ""),
                payload.get(keys.value_key, ""),
                event.timestamp,
                at,
                message_id,
                request_id,
                others or None,
            )
        )
    return lines


def encode(lines: list[LedgerLine]) -> bytes:
    return gzip.compress(_ENCODER.encode_lines(lines), COMPRESS_LEVEL, mtime=0)


def decode(data: bytes) -> list[LedgerLine]:
    text = gzip.decompress(data)
    return [_LINES.decode(line) for line in text.splitlines() if line.strip()]


class LedgerWriter:
    """Puts an invocation's ledger object in S3 on a thread of its own (`start`), and `wait`s
    for it within the time the invocation has left."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        s3: S3Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._s3 = s3
        self._sleep = sleep
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="ledger")

    def start(
        self,
        lines: list[LedgerLine],
        delivered_at: datetime,
        request_id: str,
        time_left: Callable[[], float],
    ) -> Future[None] | None:
        if not lines:
            return None
        key = object_key(self.prefix, delivered_at, request_id)
        return self._worker.submit(self._write, key, lines, time_left)

    def _write(self, key: str, lines: list[LedgerLine], time_left: Callable[[], float]) -> None:
        body = encode(lines)
        error: Exception | None = None
        for attempt in range(WRITE_ATTEMPTS):
            if time_left() <= 0:
                break
            try:
                self._s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/x-ndjson",
                    ContentEncoding="gzip",
                )
                return
            except (BotoCoreError, ClientError) as failure:
                error = failure
                self._sleep(min(0.2 * 2**attempt, max(0.0, time_left())))
        raise LedgerGap(
            f"the ledger object {key} was not written: "
            f"{type(error).__name__ if error else 'no time left'}"
        )


class LedgerGap(Exception):
    """An invocation's delivered events are not in the ledger (Stripe has them)."""


def wait(future: Future[None] | None, events: int, time_left: float) -> int:
    """The number of delivered events the ledger lacks after waiting at most `time_left`
    seconds (0 when written): logged, never raised."""
    if future is None:
        return 0
    try:
        future.result(timeout=max(0.0, time_left))
    except TimeoutError:
        logger.error("ledger gap: the write outlasted the invocation", extra={"events": events})
        return events
    except LedgerGap as gap:
        logger.error("ledger gap: %s", gap, extra={"events": events})
        return events
    return 0


def to_json(line: LedgerLine) -> dict[str, Any]:
    return msgspec.to_builtins(line)  # type: ignore[no-any-return]
