"""The forwarder: one SQS batch in, events to Stripe, dead letters to the DLQ, partial response out.

The records of a batch are delivered together (up to 100 events a call, several calls at once),
not one by one, so the `batchItemFailures` response is built here rather than through a
per-record batch processor. One `Batch` is the record of an invocation: each message is judged
once, a stream call's worth of records at a time (single events in Stripe's form judged
together, `Judge.read_singles`; any other record on its own, `Judge.read_short`, else
`Judge.read_in_full` with the record's send time), its valid events are handed to the delivery
as they come, tagged with (message, event index), and the delivery answers by tag. Then each
message is settled:
- an event still to retry fails its whole message (redelivered later with the same
  identifiers, so what was delivered is not counted twice);
- otherwise its refused events are dead-lettered, and the message succeeds only if every
  dead letter was sent.
A record's failure never raises: it is reported in `batchItemFailures`.
"""

from __future__ import annotations

import functools
import gc
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal, cast

import boto3
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from meter_relay.catalog import CatalogSource, CatalogStore
from meter_relay.config import AWS_CLIENT_CONFIG, ForwarderConfig
from meter_relay.dead_letter import DeadLetter, DeadLetterQueue
from meter_relay.delivery import (
    MAX_EVENTS_PER_CALL,
    DeliveryReport,
    DeliveryRun,
    StreamDelivery,
)
from meter_relay.events import (
    ErrorCode,
    Judge,
    MeterEvent,
    ParsedEvent,
    ParsedMessage,
    Rejection,
    ValidationRules,
    format_timestamp,
)
from meter_relay.ledger import EVENTS_PER_LINE, LedgerWriter, encode_message_ids, ledger_text
from meter_relay.ledger import wait as wait_for_ledger
from meter_relay.observability import add_samples, logger, metrics
from meter_relay.session import LambdaRefresher, SessionStore, SessionTokenSource, TokenStats
from meter_relay.stripe_client import MeterEventStream, StripeHttp

type EventTag = tuple[int, int]  # (message, index of the event in it)
_METER_CODES = frozenset({ErrorCode.NO_METER, ErrorCode.ARCHIVED_METER})
_MESSAGE_ID, _BODY = itemgetter("messageId"), itemgetter("body")
MIN_RUN_READ_TOGETHER = 25  # records: a shorter run of single events, the rest one by one
# records read at a time: a stream call's worth, and a ledger line's (their ids encoded together)
READ_TOGETHER = MAX_EVENTS_PER_CALL
assert READ_TOGETHER % EVENTS_PER_LINE == 0


def ledger_s3_config(environ: Mapping[str, str] = os.environ) -> Config:
    """The ledger's S3 client: the ledger's PUTs go to the bucket's URL as it addresses it and
    are signed as it signs them (ledger.LedgerWriter), else made by its PutObject.

    - SigV4: botocore presigns S3 URLs (the bucket's URL is found from one) with SigV2 unless
      told.
    - Virtual-hosted regional URLs on AWS: in botocore's automatic addressing, a presigned URL
      names S3's global endpoint, which answers a bucket's requests with a redirect for up to a
      day after it is created. PutObject is addressed to the bucket's Region on AWS anyway. A
      custom endpoint (AWS_ENDPOINT_URL: moto, the local stack) keeps botocore's choice.
    - The body out of the signature on any endpoint, as S3 over HTTPS does for a checksummed
      body: over HTTP (moto) botocore would hash each object (0.5 MB for 10,000 events, 0.3 ms
      of CPU) into the signature, a cost the deployed forwarder never pays."""
    custom = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    addressing: Literal["auto", "virtual"] = "auto" if custom else "virtual"
    s3 = Config(
        signature_version="s3v4",
        s3={"payload_signing_enabled": False, "addressing_style": addressing},
    )
    return AWS_CLIENT_CONFIG.merge(s3)


class Forwarder:
    """Holds what lives across invocations: clients, pools, the cached session token."""

    def __init__(
        self,
        config: ForwarderConfig,
        delivery: StreamDelivery,
        dead_letters: DeadLetterQueue,
        tokens: SessionTokenSource,
        catalog: CatalogSource | None = None,
        ledger: LedgerWriter | None = None,
    ) -> None:
        self.config = config
        self.delivery = delivery
        self.dead_letters = dead_letters
        self.tokens = tokens
        self.catalog = catalog
        self.ledger = ledger

    @classmethod
    def from_environment(cls) -> Forwarder:
        config = ForwarderConfig.from_env()
        session = boto3.session.Session()
        ssm = session.client("ssm", config=AWS_CLIENT_CONFIG)
        sqs = session.client("sqs", config=AWS_CLIENT_CONFIG)
        refresher: LambdaRefresher | None = None
        if config.refresher_function_name:
            lambda_client = session.client(
                "lambda", config=AWS_CLIENT_CONFIG.merge(Config(read_timeout=35))
            )
            refresher = LambdaRefresher(config.refresher_function_name, lambda_client)
        tokens = SessionTokenSource(
            SessionStore(config.session_parameter, ssm),
            refresher,
            config.token_margin,
            mode=config.mode,
        )
        http = StripeHttp(
            config.meter_events_base, config.api_version, pool_size=config.stream_concurrency
        )
        executor = ThreadPoolExecutor(config.stream_concurrency, thread_name_prefix="stream")
        delivery = StreamDelivery(
            MeterEventStream(http),
            tokens,
            config.retry,
            executor,
            concurrency=config.stream_concurrency,
            keep_bodies=bool(config.ledger_bucket),
        )
        dead_letters = DeadLetterQueue(config.dead_letter_queue_url, sqs)
        catalog = None
        if config.catalog_path:
            catalog = CatalogSource(
                CatalogStore(config.catalog_path, ssm),
                refresher.refresh_catalog if refresher is not None else None,
            )
        ledger = None
        if config.ledger_bucket:
            s3 = session.client("s3", config=ledger_s3_config())
            ledger = LedgerWriter(
                config.ledger_bucket, config.ledger_prefix, s3, session.get_credentials()
            )
        return cls(config, delivery, dead_letters, tokens, catalog, ledger)

    def _record(
        self,
        batch: Batch,
        report: DeliveryReport[EventTag],
        rules: ValidationRules,
        context: LambdaContext,
        time_left: Callable[[], float],
        sent_from: datetime,
    ) -> Future[None] | None:
        """Start writing the delivered events to the ledger (None: no ledger, or nothing).
        Their `delivered_at` is `sent_from`, when the invocation began, before any of its calls,
        so no later than Stripe received them. A Stripe error report on them comes after that,
        however long the calls took (their retries can take the whole timeout), so a delivery
        later than a report is one sent after it (ledger_sql: "rejected since")."""
        if self.ledger is None:
            return None
        by_record = batch.message_ids
        tags, events = report.delivered_events()
        texts = encoded_ids = None
        if len(tags) == len(by_record) and not batch.envelopes and not batch.read_in_full:
            message_ids = by_record  # a record, an event, each delivered: in the same order
            texts = batch.usual_texts  # each event's text its record's body, if all were usual
            encoded_ids = batch.encoded_ids
        else:
            message_ids = [by_record[m] for m, _ in tags]
        request_id = context.aws_request_id
        # every event delivered was judged by the short path when nothing was read in full
        names = None if batch.read_in_full else batch.judge.event_names()
        calls = report.delivered_bodies()
        text = ledger_text(
            events, message_ids, rules, sent_from, request_id, names, texts, calls, encoded_ids
        )
        # the object goes in the hour it is written: what lists objects by hour finds it there
        return self.ledger.start(text, datetime.now(UTC), request_id, time_left)

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        """Read -> deliver -> dead-letter -> settle, within the invocation's deadline."""
        records = sqs_records(event)
        if not records:
            return {"batchItemFailures": []}
        with _cyclic_gc_paused():
            return self._settle_batch(records, context)

    def _settle_batch(
        self, records: list[dict[str, Any]], context: LambdaContext
    ) -> dict[str, Any]:
        """The batch's work, in a frame of its own: its objects are freed with the frame, before
        the cyclic collector runs again (`_cyclic_gc_paused`)."""

        def remaining() -> float:
            return context.get_remaining_time_in_millis() / 1000.0

        retry = self.config.retry

        def time_left() -> float:  # for SSM and the refresher: never past the deadline
            return remaining() - retry.deadline_margin

        self.tokens.begin_invocation(time_left=time_left)
        rules = self.config.rules
        if self.catalog is not None:
            self.catalog.begin_invocation(time_left)
            catalog = self.catalog.current()
            rules = rules.with_meters(catalog.meters if catalog is not None else None)
        began = datetime.now(UTC)
        batch = Batch(records, Judge(rules, began), self.ledger is not None)
        run: DeliveryRun[EventTag] = self.delivery.start(remaining)
        batch.read_into(run)
        if batch.refused_for_their_meter() and self.catalog is not None:
            # a meter created a minute ago is not refused: the catalog is read again once
            newer = self.catalog.refreshed()
            if newer is not None:
                # the ledger records the batch by the meters it was judged by (their keys)
                rules = rules.with_meters(newer.meters)
                batch.judge_meters_again(run, rules)
        # the batch is read: its identifier table goes while the calls are in flight, not
        # after them, when freeing it would add to the invocation's time
        batch.judge.forget_identifiers()
        # calls unanswered with half the margin left are abandoned: dead letters and the
        # answer need the rest
        report = run.finish(stop_at=retry.deadline_margin / 2)

        def settle_time() -> float:
            return remaining() - retry.dead_letter_margin

        # the ledger is written beside the dead letters, both within the deadline
        recording = self._record(batch, report, rules, context, settle_time, began)
        letters = batch.letters(report)
        unsent = self.dead_letters.send(letters, settle_time)
        settled = batch.settle(report, letters, unsent)
        settled.ledger_gap = wait_for_ledger(recording, report.delivered_count, settle_time())
        _publish(settled, report, self.tokens.take_stats(), self.delivery.limit.limit)
        if self.catalog is not None:
            metrics.add_metric(
                "MeterCatalogRefreshes", MetricUnit.Count, self.catalog.take_refreshes()
            )
        logger.info(
            "batch settled",
            extra={
                "records": len(records),
                "events_received": settled.received,
                "events_delivered": settled.delivered,
                "events_dead_lettered": dict(settled.dead_lettered),
                "events_to_retry": settled.retried_events,
                "messages_failed": len(settled.failed),
            },
        )
        return settled.response(records)


_SINGLE_EVENT_TAGS: list[EventTag] = []


def _single_event_tags(start: int, count: int) -> list[EventTag]:
    """The tags of single-event messages `start` to `start + count`, (m, 0), each made once
    per execution environment: made and freed with every batch, 10,000 of them cost 1-1.5 ms."""
    end = start + count
    if len(_SINGLE_EVENT_TAGS) < end:
        _SINGLE_EVENT_TAGS.extend(zip(range(len(_SINGLE_EVENT_TAGS), end), repeat(0)))
    return _SINGLE_EVENT_TAGS[start:end]


def sqs_records(event: Any) -> list[dict[str, Any]]:
    """The records of an SQS event (none is a batch too: nothing to do)."""
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not all(
        isinstance(record, dict) and isinstance(record.get("messageId"), str) for record in records
    ):
        raise ValueError(
            'the forwarder takes an SQS event: {"Records": [...]}, each record with its messageId'
        )
    return records


@dataclass
class Settled:
    """What became of one invocation's batch: the response, and figures for logs and metrics."""

    failed: dict[int, str]  # message -> why it goes back to the queue
    received: int = 0
    delivered: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    retried_events: int = 0
    ledger_gap: int = 0  # delivered events the ledger lacks (its write failed)

    def response(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Lambda's partial batch response (ReportBatchItemFailures)."""
        return {
            "batchItemFailures": [
                {"itemIdentifier": records[m]["messageId"]} for m in sorted(self.failed)
            ]
        }


class Batch:
    """One invocation's records, read once, and what became of each message's events.

    Nearly every record is one valid event in Stripe's form: such a record leaves nothing
    behind but its event, handed to the delivery (objects kept per record cost more than the
    reading itself); an envelope of valid events, its events and their number. Anything else
    is kept in full (`read_in_full`), with each event's verdict.
    """

    def __init__(
        self, records: list[dict[str, Any]], judge: Judge, encode_ids: bool = False
    ) -> None:
        self.records = records
        self.judge = judge
        self.read_in_full: dict[int, ParsedMessage] = {}
        self.envelopes: dict[int, int] = {}  # envelopes of valid events only: their sizes
        self.message_ids: list[str] = []  # by record, taken while reading (for the ledger)
        # `encode_ids` (the ledger is on): message_ids as the ledger's lines hold them, encoded
        # while in the CPU's cache (ledger.encode_message_ids); None once a record read is not
        # one event (an envelope, or a record read in full), when the lines cannot take them
        self.encoded_ids: list[bytes] | None = [] if encode_ids else None
        # by record, while every record read was usual: its one event's text (for the ledger,
        # which need not then read 10,000 events it has not touched since their calls)
        self.usual_texts: list[str] | None = []
        self.received = 0

    def read_into(self, run: DeliveryRun[EventTag]) -> None:
        """Read each record and add its valid events to `run` as they come (the network works
        while the rest of the batch is read), a stream call's worth of records at a time."""
        records = self.records
        for start in range(0, len(records), READ_TOGETHER):
            part = records[start : start + READ_TOGETHER]
            message_ids = list(map(_MESSAGE_ID, part))
            self.message_ids.extend(message_ids)
            if self.encoded_ids is not None:
                if self.envelopes or self.read_in_full:
                    self.encoded_ids = None  # not an event a record: the ledger cannot use them
                else:
                    self.encoded_ids += encode_message_ids(message_ids)
            try:
                bodies = list(map(_BODY, part))
            except KeyError:  # a record without a body
                self._read_each(part, start, run)
                self.usual_texts = None
            else:
                usual = self._read_run(part, bodies, message_ids, start, run)
                if not usual:
                    self.usual_texts = None
                elif self.usual_texts is not None:
                    self.usual_texts.extend(bodies)
        self.received = (
            len(self.records)
            - len(self.read_in_full)
            - len(self.envelopes)
            + sum(self.envelopes.values())
            + sum(len(message.events) or 1 for message in self.read_in_full.values())
        )

    def _read_run(
        self,
        records: list[dict[str, Any]],
        bodies: list[str],
        message_ids: list[str],
        start: int,
        run: DeliveryRun[EventTag],
    ) -> bool:
        """A run of records, message `start` of the batch first: their single events judged
        together (`Judge.read_singles`: the usual run in one step), in order, each other
        record read on its own in its turn. Once such a step takes only a few records, the
        rest are read one by one (a step costs what reading a few records does). True if every
        record was usual: one event, sent as its record's body."""
        done, all_usual = 0, True
        while done < len(records):
            singles = self.judge.read_singles(bodies[done:], message_ids[done:])
            events, m = singles.events, start + done
            if singles.usual:
                run.extend(cast("list[MeterEvent]", events), _single_event_tags(m, len(events)))
            else:
                all_usual = False
                for event in events:
                    if event is None:
                        self._read_each([records[m - start]], m, run)
                    else:
                        run.add(event, (m, 0))
                    m += 1
            done += len(events)
            if done == len(records):
                break
            all_usual = False  # a record the judge could not take as one event
            if len(events) < MIN_RUN_READ_TOGETHER:
                self._read_each(records[done:], start + done, run)
                break
            self._read_each(records[done : done + 1], start + done, run)
            done += 1
        return all_usual

    def _read_each(
        self, records: list[dict[str, Any]], start: int, run: DeliveryRun[EventTag]
    ) -> None:
        """Records read one by one (`Judge.read_short`, else `read_in_full` with the record's
        send time), the first of them message `start` of the batch."""
        read = self.judge.read_short
        envelopes = self.envelopes
        for m, record in enumerate(records, start):
            message_id = record["messageId"]
            body = record.get("body") or ""
            short = read(body, message_id)
            if type(short) is MeterEvent:
                run.add(short, (m, 0))
            elif type(short) is list:
                envelopes[m] = len(short)
                run.extend(short, zip(repeat(m), range(len(short))))
            else:
                message = self.judge.read_in_full(body, message_id, self._sent_at(record))
                self.read_in_full[m] = message
                for parsed in message.events:
                    if parsed.event is not None:
                        run.add(parsed.event, (m, parsed.index))

    def refused_for_their_meter(self) -> int:
        """Events refused as no_meter or archived_meter (by the catalog the batch began with)."""
        return sum(
            1
            for message in self.read_in_full.values()
            for parsed in message.events
            if parsed.rejection is not None and parsed.rejection.code in _METER_CODES
        )

    def judge_meters_again(self, run: DeliveryRun[EventTag], rules: ValidationRules) -> None:
        """Judge the events refused for their meter again, by a newer catalog; those now valid
        are delivered with the rest."""
        judge = self.judge
        judge.rules = rules
        judge.forget_meters()
        for m, message in self.read_in_full.items():
            for position, parsed in enumerate(message.events):
                if parsed.rejection is None or parsed.rejection.code not in _METER_CODES:
                    continue
                again = judge.normalise(
                    parsed.raw, parsed.index, message.message_id, parsed.sent_at or judge.now
                )
                event = again.event
                if event is not None:
                    duplicate = judge.duplicate(event, message.message_id, parsed.index)
                    if duplicate is not None:
                        again = replace(again, event=None, rejection=duplicate)
                    else:
                        run.add(event, (m, parsed.index))
                message.events[position] = again

    def letters(self, report: DeliveryReport[EventTag]) -> list[DeadLetter]:
        """The dead letters of every message that has nothing left to retry: its events refused
        here (invalid, or an identifier another event of the batch holds) or by Stripe."""
        to_retry = {m for m, _ in report.retry}
        refused: dict[int, dict[int, tuple[ParsedEvent, Rejection]]] = {}
        for (m, index), rejection in report.rejected.items():
            event = report.refused_events[(m, index)]
            refused.setdefault(m, {})[index] = (
                ParsedEvent(index, event.identifier, event, event.to_stripe()),
                rejection,
            )
        letters: list[DeadLetter] = []
        for m in sorted(refused.keys() | self.read_in_full.keys()):
            if m in to_retry:
                continue
            record = self.records[m]
            seen = self._first_seen(record)
            message = self.read_in_full.get(m)
            if message is not None and message.rejection is not None:
                letters.append(
                    DeadLetter.for_message(
                        record.get("body") or "", message.rejection, record["messageId"], seen
                    )
                )
                continue
            events = refused.get(m, {})
            if message is not None:
                for parsed in message.events:
                    if parsed.rejection is not None:
                        events[parsed.index] = (parsed, parsed.rejection)
            for index in sorted(events):
                parsed, rejection = events[index]
                letters.append(DeadLetter.for_event(parsed, rejection, record["messageId"], seen))
        return letters

    def settle(
        self, report: DeliveryReport[EventTag], letters: list[DeadLetter], unsent: list[DeadLetter]
    ) -> Settled:
        """Which messages go back to the queue, and the figures of the batch."""
        failed: dict[int, str] = {}
        to_retry = Counter(m for m, _ in report.retry)
        for m, count in to_retry.items():
            failed[m] = f"{count} events to retry"
        if unsent:
            index_of = {record["messageId"]: m for m, record in enumerate(self.records)}
            for letter in unsent:
                failed.setdefault(index_of[letter.source_message_id], "a dead letter was not sent")
        unsent_ids = {id(letter) for letter in unsent}
        return Settled(
            failed=failed,
            received=self.received,
            delivered=report.delivered_count,
            dead_lettered=Counter(
                letter.code for letter in letters if id(letter) not in unsent_ids
            ),
            retried_events=sum(self._events_in(m) for m in failed),
        )

    def _events_in(self, m: int) -> int:
        """A message's events: one, unless it is an envelope or was read in full."""
        message = self.read_in_full.get(m)
        if message is not None:
            return len(message.events)
        return self.envelopes.get(m, 1)

    def _sent_at(self, record: dict[str, Any]) -> datetime:
        """When the producer sent the message: an event without a timestamp takes it."""
        sent = (record.get("attributes") or {}).get("SentTimestamp")
        return _from_millis(sent) if sent else self.judge.now

    def _first_seen(self, record: dict[str, Any]) -> str:
        first = (record.get("attributes") or {}).get("ApproximateFirstReceiveTimestamp")
        return format_timestamp(_from_millis(first) if first else self.judge.now)


def _publish(
    settled: Settled, report: DeliveryReport[EventTag], tokens: TokenStats, in_flight_limit: int
) -> None:
    """The invocation's metrics, in one EMF document (plus one per dead-letter code)."""
    calls = report.calls
    counts: dict[str, float] = {
        "EventsReceived": settled.received,
        "EventsDelivered": settled.delivered,
        "EventsDeadLettered": sum(settled.dead_lettered.values()),
        "EventsRetried": settled.retried_events,
        "MessagesFailed": len(settled.failed),
        "StreamCalls": calls.calls,
        "StreamCallsRetried": calls.retried_calls,
        "StreamCallsRateLimited": calls.rate_limited_calls,
        "StreamAnswersNotStripe": calls.not_stripe_answers,
        "StreamCallsAbandoned": calls.late_chunks,
        "StreamConcurrencyLimit": in_flight_limit,
        "SessionRenewals": calls.session_renewals,
        "TokenParameterReads": tokens.parameter_reads,
        "TokenRefresherCalls": tokens.refresher_calls,
        "TokenRenewalsFailed": tokens.renewals_failed,
        "SessionModeMismatch": tokens.mode_mismatches,
        "LedgerGap": settled.ledger_gap,
    }
    for name, value in counts.items():
        metrics.add_metric(name, MetricUnit.Count, value)
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, calls.latencies_ms)
    for code, count in settled.dead_lettered.items():
        with single_metric(
            name="EventsDeadLetteredByCode",
            unit=MetricUnit.Count,
            value=count,
            namespace=metrics.namespace,
            default_dimensions=metrics.default_dimensions,
        ) as metric:
            metric.add_dimension(name="ErrorCode", value=code)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A 10,000-record batch allocates millions of short-lived objects, freed by reference
    counting; the cyclic collector's full passes over them cost more than the parsing itself.
    It runs again, on its usual thresholds, once the batch's objects are freed: turned back
    on while they lived, its next pass traversed them all and promoted them to the older
    generations, whose full passes then cost later invocations (5-8% of the CPU per event)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@functools.lru_cache(maxsize=1024)
def _from_millis(millis: str) -> datetime:
    """SQS's timestamps; a batch's records share few of them (producers send in batches)."""
    return datetime.fromtimestamp(int(millis) / 1000, UTC)
