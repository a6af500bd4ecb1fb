"""The forwarder: one SQS batch in, events to Stripe, dead letters to the DLQ, partial response out.

Built on Powertools' batch utility: a custom processor, because the records of a batch are
delivered together (up to 100 events a call) rather than one by one. Each record is parsed
once; the valid events of all records are delivered; then each record is settled:
- an event still to retry fails its whole message (redelivered later with the same
  identifiers, so what was delivered is not counted twice);
- otherwise its rejected events are dead-lettered, and the message succeeds only if every
  dead letter was sent.
A record's failure never raises: it is reported in `batchItemFailures`.
"""

from __future__ import annotations

import functools
import gc
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import (
    BasePartialBatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

from meter_relay.config import AWS_CLIENT_CONFIG, ForwarderConfig
from meter_relay.dead_letter import DeadLetter, DeadLetterQueue
from meter_relay.delivery import DeliveryReport, StreamDelivery
from meter_relay.events import (
    Judge,
    ParsedMessage,
    Rejection,
    ValidationRules,
    decode_body,
    format_timestamp,
    parse_document,
    parse_message,
    single_message,
)
from meter_relay.observability import logger, metrics
from meter_relay.session import LambdaRefresher, SessionStore, SessionTokenSource
from meter_relay.stripe_client import MeterEventStream, StripeHttp

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse


MAX_LATENCY_SAMPLES = 99


class RetryLater(Exception):
    """A message with events still to deliver: it goes back to the queue."""


@dataclass
class Settled:
    """What became of one invocation's batch, for the response, logs and metrics."""

    received: int = 0
    delivered: int = 0
    failed_messages: int = 0
    dead_lettered: Counter[str] | None = None
    retried_events: int = 0


class Forwarder:
    """Holds what lives across invocations: clients, pools, the cached session token."""

    def __init__(
        self,
        config: ForwarderConfig,
        delivery: StreamDelivery,
        dead_letters: DeadLetterQueue,
        tokens: SessionTokenSource,
    ) -> None:
        self.config = config
        self.delivery = delivery
        self.dead_letters = dead_letters
        self.tokens = tokens

    @classmethod
    def from_environment(cls) -> Forwarder:
        config = ForwarderConfig.from_env()
        session = boto3.session.Session()
        ssm = session.client("ssm", config=AWS_CLIENT_CONFIG)
        sqs = session.client("sqs", config=AWS_CLIENT_CONFIG)
        refresher = None
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
        delivery = StreamDelivery(MeterEventStream(http), tokens, config.retry, executor)
        dead_letters = DeadLetterQueue(config.dead_letter_queue_url, sqs)
        return cls(config, delivery, dead_letters, tokens)

    def handle(self, event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        # waiting for SSM or the refresher must not carry this invocation past its deadline
        margin = self.config.retry.deadline_margin
        self.tokens.begin_invocation(
            time_left=lambda: context.get_remaining_time_in_millis() / 1000.0 - margin
        )
        processor = ForwardingProcessor(self, context)
        with _cyclic_gc_paused():
            response = process_partial_response(
                event=event, record_handler=processor.parse, processor=processor, context=context
            )
        settled = processor.settled
        logger.info(
            "batch settled",
            extra={
                "records": len(processor.records),
                "events_received": settled.received,
                "events_delivered": settled.delivered,
                "events_dead_lettered": dict(settled.dead_lettered or {}),
                "events_to_retry": settled.retried_events,
                "messages_failed": settled.failed_messages,
            },
        )
        return response


class ForwardingProcessor(BasePartialBatchProcessor):
    """Powertools batch processor whose records are delivered together, then settled one by one."""

    def __init__(self, forwarder: Forwarder, context: LambdaContext) -> None:
        super().__init__(EventType.SQS, raise_on_entire_batch_failure=False)
        self.forwarder = forwarder
        self.context = context
        self.settled = Settled(dead_lettered=Counter())
        self._with_rejections: set[int] = set()  # messages with something to dead-letter
        self._now = datetime.now(UTC)

    def _process_record(self, record: dict[str, Any]) -> tuple[Any, ...]:  # pragma: no cover
        raise NotImplementedError("records are processed together in process()")

    async def _async_process_record(self, record: dict[str, Any]) -> tuple[Any, ...]:
        raise NotImplementedError("records are processed together in process()")

    def parse(self, record: SQSRecord) -> ParsedMessage:
        """The record handler: one parse per record, never raising."""
        return self._parse_raw(record.raw_event)

    def _parse_raw(self, raw: dict[str, Any]) -> ParsedMessage:
        """The same, on the record as Lambda sends it (no wrapper objects on the hot path)."""
        rules: ValidationRules = self.forwarder.config.rules
        return parse_message(
            raw.get("body") or "", raw["messageId"], self._sent_at(raw), rules, self._now
        )

    def _sent_at(self, raw: dict[str, Any]) -> datetime:
        """When the producer sent the message: an event without a timestamp takes it."""
        sent = (raw.get("attributes") or {}).get("SentTimestamp")
        return _from_millis(sent) if sent else self._now

    def process(self) -> list[tuple[Any, ...]]:
        in_full, valid, report = self._parse_and_deliver()
        to_retry = Counter(valid[i][0] for i in report.retry)  # message -> events to retry
        # by (message, event index): events of a message may share an identifier (a producer's
        # mistake), and only the one Stripe refused is dead-lettered
        rejected_by_stripe: dict[tuple[int, int], Rejection] = {}
        for position, rejection in report.rejected.items():
            rejected_by_stripe[valid[position]] = rejection
            self._with_rejections.add(valid[position][0])
        letters = {
            m: self._dead_letters(SQSRecord(self.records[m]), in_full[m], rejected_by_stripe, m)
            for m in sorted(self._with_rejections)
            if m not in to_retry
        }
        all_letters = [letter for group in letters.values() for letter in group]
        margin = self.forwarder.config.retry.dead_letter_margin
        unsent = {
            id(letter)
            for letter in self.forwarder.dead_letters.send(
                all_letters, lambda: self._remaining() - margin
            )
        }
        failed = {m: f"{count} events to retry" for m, count in to_retry.items()}
        for m, group in letters.items():
            if any(id(letter) in unsent for letter in group):
                failed[m] = "a dead letter could not be sent"
        results = []
        for m, raw in enumerate(self.records):  # Lambda's dicts: wrapped only when failed
            reason = failed.get(m)
            if reason is None:
                results.append(self.success_handler(raw, _events_in(in_full, m)))
            else:
                error = _exc_info(RetryLater(reason))
                results.append(self.failure_handler(SQSRecord(raw), error))
        self._account(report, letters, unsent, set(to_retry), in_full)
        return results

    def _parse_and_deliver(
        self,
    ) -> tuple[dict[int, ParsedMessage], list[tuple[int, int]], DeliveryReport]:
        """Each record read once; its valid events handed to the delivery as they come.

        A record of one valid event in Stripe's form, nearly every record, is read in the
        fewest steps and leaves nothing behind but that event: objects kept per record cost
        more than the reading itself. The others are parsed in full, and so is such a record
        again if Stripe refuses its event (for its letter). Returns the messages parsed in full
        by index (any other holds one event), (message, event index) by delivery position, and
        the report.
        """
        run = self.forwarder.delivery.start(self._remaining)
        judge = Judge(self.forwarder.config.rules, self._now)
        in_full: dict[int, ParsedMessage] = {}
        valid: list[tuple[int, int]] = []
        self._with_rejections.clear()
        for m, raw in enumerate(self.records):
            body = raw.get("body") or ""
            document = decode_body(body)
            event = judge.single(body, document)
            if event is not None:
                run.add(event)
                valid.append((m, 0))
                continue
            message = parse_document(body, document, raw["messageId"], self._sent_at(raw), judge)
            in_full[m] = message
            if message.rejection is not None:
                self._with_rejections.add(m)
            for one in message.events:
                if one.event is not None:
                    run.add(one.event)
                    valid.append((m, one.index))
                else:
                    self._with_rejections.add(m)
        received = len(self.records) - len(in_full)
        self.settled.received = received + sum(len(m.events) or 1 for m in in_full.values())
        report = run.finish()
        for position in report.rejected:
            m = valid[position][0]
            if m not in in_full:
                in_full[m] = single_message(self.records[m]["messageId"], run.events[position])
        return in_full, valid, report

    def _dead_letters(
        self,
        record: SQSRecord,
        message: ParsedMessage,
        rejected_by_stripe: dict[tuple[int, int], Rejection],
        m: int,
    ) -> list[DeadLetter]:
        first_seen = record.attributes.get("ApproximateFirstReceiveTimestamp")
        seen = format_timestamp(
            datetime.fromtimestamp(int(first_seen) / 1000, UTC) if first_seen else self._now
        )
        if message.rejection is not None:
            unusable = message.rejection
            return [
                DeadLetter(
                    record.body or "",
                    unusable.code,
                    unusable.message,
                    record.message_id,
                    seen,
                    param=unusable.param,
                )
            ]
        letters = []
        for parsed in message.events:
            rejection: Rejection | None = parsed.rejection
            if rejection is None and parsed.event is not None:
                rejection = rejected_by_stripe.get((m, parsed.index))
            if rejection is None:
                continue
            letters.append(
                DeadLetter(
                    parsed.dead_letter_body(),
                    rejection.code,
                    rejection.message,
                    record.message_id,
                    seen,
                    event_index=parsed.index,
                    event_name=parsed.event_name,
                    identifier=parsed.identifier,
                    param=rejection.param,
                )
            )
        return letters

    def _remaining(self) -> float:
        return self.context.get_remaining_time_in_millis() / 1000.0

    def _account(
        self,
        report: DeliveryReport,
        letters: dict[int, list[DeadLetter]],
        unsent: set[int],
        retry_messages: set[int],
        in_full: dict[int, ParsedMessage],
    ) -> None:
        settled = self.settled
        codes: Counter[str] = Counter(
            letter.code
            for group in letters.values()
            for letter in group
            if id(letter) not in unsent
        )
        settled.dead_lettered = codes
        settled.delivered = len(report.delivered)
        settled.retried_events = sum(_events_in(in_full, m) for m in retry_messages)
        settled.failed_messages = len(self.fail_messages)
        metrics.add_metric("EventsReceived", MetricUnit.Count, settled.received)
        metrics.add_metric("EventsDelivered", MetricUnit.Count, settled.delivered)
        metrics.add_metric("EventsDeadLettered", MetricUnit.Count, sum(codes.values()))
        metrics.add_metric("EventsRetried", MetricUnit.Count, settled.retried_events)
        metrics.add_metric("MessagesFailed", MetricUnit.Count, settled.failed_messages)
        metrics.add_metric("StreamCalls", MetricUnit.Count, report.calls)
        metrics.add_metric("StreamCallsRetried", MetricUnit.Count, report.retried_calls)
        metrics.add_metric("StreamCallsRateLimited", MetricUnit.Count, report.rate_limited_calls)
        metrics.add_metric("SessionRenewals", MetricUnit.Count, report.session_renewals)
        tokens = self.forwarder.tokens.take_stats()
        metrics.add_metric("TokenParameterReads", MetricUnit.Count, tokens.parameter_reads)
        metrics.add_metric("TokenRefresherCalls", MetricUnit.Count, tokens.refresher_calls)
        metrics.add_metric("SessionModeMismatch", MetricUnit.Count, tokens.mode_mismatches)
        # Powertools flushes a metric by itself once it holds 100 values: stay below, so that
        # one EMF document per invocation carries every metric.
        for latency in report.latencies_ms[:MAX_LATENCY_SAMPLES]:
            metrics.add_metric("StreamCallLatency", MetricUnit.Milliseconds, latency)
        for code, count in codes.items():
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
    It runs again, on its usual thresholds, once the batch is settled."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _events_in(in_full: dict[int, ParsedMessage], m: int) -> int:
    """A message's events: one, unless it was parsed in full (see _parse_and_deliver)."""
    message = in_full.get(m)
    return 1 if message is None else len(message.events)


@functools.lru_cache(maxsize=1024)
def _from_millis(millis: str) -> datetime:
    """SQS's SentTimestamp; a batch's records share few of them (producers send in batches)."""
    return datetime.fromtimestamp(int(millis) / 1000, UTC)


def _exc_info(error: Exception) -> tuple[type[BaseException], BaseException, None]:
    return (type(error), error, None)
