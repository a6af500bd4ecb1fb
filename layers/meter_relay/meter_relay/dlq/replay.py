"""Replay: dead-lettered events corrected (--fix), checked as the forwarder checks them, and
sent again: to the usage queue, or through Stripe's synchronous /v2/billing/meter_events.

Each message is planned (corrected, judged: what can go, what stays as a letter of its own),
sent (a window of messages at once, by the resend chosen at construction), then settled:
what stays goes into the DLQ as letters, and only then does the message leave it.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from meter_relay.config import RetryPolicy
from meter_relay.dead_letter import DeadLetter
from meter_relay.dlq.delivered import ALREADY_DELIVERED, LEDGER_UNREADABLE, delivered_among
from meter_relay.dlq.letters import event_letter, own_reason, rest_letters
from meter_relay.dlq.reading import SYNC_REPLAY_PREFIX, DlqMessage
from meter_relay.dlq.resend import UsageQueue
from meter_relay.dlq.runs import (
    PAST_DEDUP_WINDOW,
    Action,
    Outcome,
    Pass,
    Progress,
    RunSummary,
    past_dedup_warning,
)
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.dlq.selection import Filters, Fix
from meter_relay.events import ErrorCode, MeterEvent, ParsedEvent, Rejection, normalise_event
from meter_relay.ledger_queries import DeliveredLookup
from meter_relay.ledger_store import LedgerUnavailable
from meter_relay.retry import TOOLS_RETRY, Jitter, RateLimit, answer_code, with_retries
from meter_relay.sqs_batches import envelopes
from meter_relay.stripe_client import Kind, StripeAnswer

TOO_OLD = " (outside Stripe's 35-day window: not sent)"
OUT_OF_TIME = "not sent before the deadline: the next run sends it"
UNANSWERED_IN_TIME = (
    "sent, but no answer came before the deadline (Stripe may have it): the next run sends it again"
)
NOT_QUEUED = "not put back on the usage queue (the next run sends it)"
SYNC_SENDERS = 4  # messages sent through the synchronous endpoint at once
NOT_RECORDED = (
    "Stripe counted these events, but the delivery ledger could not record them: trace does "
    "not find them, reconcile shows Stripe higher, and a replay after Stripe's 24 hours would "
    "bill them again"
)


class MeterEventsApi(Protocol):
    """Stripe's synchronous meter event endpoint (StripeApi has it)."""

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer: ...


@dataclass
class Plan:
    """A message corrected and judged: what can be sent, and what stays (each as a letter)."""

    message: DlqMessage
    ready: list[ParsedEvent]
    letters: list[DeadLetter]
    outcome: Outcome  # the events that stay noted already


@dataclass
class Sent:
    """What a resend made of one plan's ready events."""

    counted: list[ParsedEvent] = field(default_factory=list)  # at their destination
    refused: list[tuple[ParsedEvent, StripeAnswer]] = field(default_factory=list)
    rest: list[ParsedEvent] = field(default_factory=list)  # not sent: from where it stopped
    failure: StripeAnswer | None = None  # what stopped it (None: the time ran out)
    rest_error: str | None = None  # the rest could not be put on the queue (SQS's answer)
    unanswered: bool = False  # the time ran out after `failure`, a call with no final word
    error: str | None = None  # the destination could not be written to: nothing went
    unrecorded: str | None = None  # why the delivery ledger lacks the counted events


class Resend(Protocol):
    """Where a replay sends the events it can: chosen once, when the Replayer is made."""

    via: str

    def send(
        self,
        plans: list[Plan],
        remaining: Callable[[], float] | None,
        keep_hidden: Callable[[], None],
    ) -> list[Sent]: ...


class QueueResend:
    """Back to the usage queue: a message per plan, its events with identity written in (and
    several where that outgrows what SQS takes)."""

    via = "queue"

    def __init__(self, queue: UsageQueue) -> None:
        self.queue = queue

    def send(
        self,
        plans: list[Plan],
        remaining: Callable[[], float] | None,
        keep_hidden: Callable[[], None],
    ) -> list[Sent]:
        bodies: list[str] = []
        runs: list[list[tuple[list[ParsedEvent], int]]] = []  # per plan: its events, their body
        for plan in plans:
            sendable = [e for e in plan.ready if e.event is not None]
            runs.append([])
            for run, body in envelopes(sendable, _resent_text):
                runs[-1].append((run, len(bodies)))
                bodies.append(body)
        errors = self.queue.send(bodies)
        return [
            _queued(plan, plan_runs, errors) for plan, plan_runs in zip(plans, runs, strict=True)
        ]


def _resent_text(event: ParsedEvent) -> str:
    return cast("MeterEvent", event.event).stripe_text()


def _queued(
    plan: Plan, runs: list[tuple[list[ParsedEvent], int]], errors: list[str | None]
) -> Sent:
    """What the queue took of a plan's messages: all, none (its error), or the first events
    of some (the others, not sent, stay as they were)."""
    failed = [errors[body] for _, body in runs if errors[body] is not None]
    if not failed:
        return Sent(counted=plan.ready)
    taken = [e for run, body in runs if errors[body] is None for e in run]
    if not taken:
        return Sent(error=failed[0])
    rest = [e for run, body in runs if errors[body] is not None for e in run]
    return Sent(counted=taken, rest=rest, rest_error=failed[0])


# what Stripe counted through a sync replay, each event with the SQS message it came from, and
# when the sends began, put in the delivery ledger (ledger_store.record_sync_deliveries);
# LedgerUnavailable if it is not
RecordDeliveries = Callable[[list[tuple[str, MeterEvent]], datetime], object]


class SyncResend:
    """Through /v2/billing/meter_events, a few messages at once and each message's events in
    order. An event Stripe refuses does not stop the others; a failure that is not the
    event's (409, 429, 5xx, no answer, after the retries) stops its message there, and so
    does the time running out (checked before each attempt, whose timeout it bounds).

    With `record`, what Stripe counted is put in the delivery ledger after each window, as the
    forwarder records what it delivers: these events reach Stripe without the forwarder, and
    a ledger that lacked them would let a replay after Stripe's 24 hours bill them again."""

    via = "sync"

    def __init__(
        self,
        api: MeterEventsApi,
        *,
        record: RecordDeliveries | None = None,
        policy: RetryPolicy = TOOLS_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Jitter = random.uniform,
        senders: int = SYNC_SENDERS,
    ) -> None:
        self.api = api
        self.record = record
        self.policy = policy
        self.sleep = sleep
        self.jitter = jitter
        self.senders = senders

    def send(
        self,
        plans: list[Plan],
        remaining: Callable[[], float] | None,
        keep_hidden: Callable[[], None],
    ) -> list[Sent]:
        began = datetime.now(UTC)
        with ThreadPoolExecutor(self.senders, thread_name_prefix="sync-replay") as pool:
            futures = [pool.submit(self._send_events, plan.ready, remaining) for plan in plans]
            pending: set[Future[Sent]] = set(futures)
            while pending:  # a long window must not let its messages show again
                _, pending = wait_for(pending, timeout=5.0)
                keep_hidden()
        results = [future.result() for future in futures]
        self._record(plans, results, began)
        return results

    def _record(self, plans: list[Plan], results: list[Sent], began: datetime) -> None:
        """What Stripe counted, in the ledger; when it cannot be, each message that had some
        says so (its outcome warns)."""
        counted = [
            (plan.message.source_message_id, parsed.event)
            for plan, sent in zip(plans, results, strict=True)
            for parsed in sent.counted
            if parsed.event is not None
        ]
        if self.record is None or not counted:
            return
        try:
            self.record(counted, began)
        except LedgerUnavailable as error:
            for sent in results:
                if sent.counted:
                    sent.unrecorded = str(error)

    def _call(
        self, payload: dict[str, Any], tried: list[StripeAnswer], timeout: float
    ) -> StripeAnswer:
        answer = self.api.create_meter_event(payload, timeout)
        tried.append(answer)
        return answer

    def _send_events(
        self, events: list[ParsedEvent], remaining: Callable[[], float] | None
    ) -> Sent:
        sent = Sent()
        for position, parsed in enumerate(events):
            if parsed.event is None:
                continue  # planning keeps only events that can be sent
            tried: list[StripeAnswer] = []
            call = functools.partial(self._call, parsed.event.to_stripe(), tried)
            answer = with_retries(
                call, policy=self.policy, sleep=self.sleep, jitter=self.jitter, remaining=remaining
            )
            if answer is None and tried and _outcome_unknown(tried[-1]):
                # it went out, and no word came back before the time ran out: its letter says
                # so (a later replay past 24 hours warns), and the next run sends it again
                sent.rest, sent.failure, sent.unanswered = events[position:], tried[-1], True
                break
            if answer is None:
                sent.rest = events[position:]
                break
            if answer.kind is Kind.OK or answer.code == "duplicate_meter_event":
                sent.counted.append(parsed)  # counted now, or already: either way at Stripe
            elif answer.kind is Kind.REJECTED:
                sent.refused.append((parsed, answer))
            else:
                sent.rest, sent.failure = events[position:], answer
                break
        return sent


@dataclass
class _Settlement:
    plan: Plan
    letters: list[DeadLetter] = field(default_factory=list)
    leaves: bool = False  # the message leaves the DLQ once its letters are in
    stopped: bool = False  # the time ran out inside it


class Replayer:
    """Replays the DLQ messages a selection chooses, through one Resend; with a `ledger`, the
    events it says Stripe has are not sent again (their letters are settled)."""

    def __init__(
        self,
        reader: DeadLetterReader,
        resend: Resend,
        *,
        fix: Fix | None = None,
        dry_run: bool = False,
        rate: RateLimit | None = None,
        ledger: DeliveredLookup | None = None,
    ) -> None:
        self.reader = reader
        self.resend = resend
        self.fix = fix or Fix()
        self.dry_run = dry_run
        self.rate = rate or RateLimit(None)
        self.ledger = ledger

    def replay(
        self,
        filters: Filters,
        *,
        remaining: Callable[[], float] | None = None,
        progress: Progress | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> RunSummary:
        """Replay every matching message; `remaining()` (seconds) stops it early, cleanly:
        between messages, and inside one between its events (what was not sent stays)."""
        work = Pass(self.reader, filters, remaining, skip)
        return work.run(
            lambda window: self._send_and_settle([self.plan(m) for m in window], remaining),
            rate=self.rate,
            progress=progress,
        )

    def plan(self, message: DlqMessage) -> Plan:
        """The message's events corrected (the fix; never an identifier) and checked as the
        forwarder checks them: what can be sent, and a letter for each event that cannot."""
        outcome = Outcome(message.message_id, Action.KEPT)
        if not message.events:
            outcome.action, outcome.code = Action.SKIPPED, message.code
            outcome.detail = "the body is not an event (nothing to replay; inspect it by hand)"
            return Plan(message, [], [], outcome)
        if message.past_dedup_window:
            outcome.warnings.append(PAST_DEDUP_WINDOW)
        now, rules = datetime.now(UTC), self.reader.rules
        ready, letters = [], []
        for dlq_event in message.events:
            raw = self.fix.apply(dlq_event.raw, rules)
            event = normalise_event(
                raw, dlq_event.index, message.source_message_id, message.sent_at, rules, now
            )
            if event.rejection is None:
                ready.append(event)
                continue
            rejection = event.rejection
            too_old = rejection.code == ErrorCode.TIMESTAMP_TOO_FAR_IN_PAST
            outcome.keep(event, rejection.code, rejection.message + (TOO_OLD if too_old else ""))
            letters.append(event_letter(message, event, rejection))
        outcome.identifiers = [e.identifier for e in ready if e.identifier]
        if not ready:  # nothing to send: the message stays as it is
            codes = {e["code"] for e in outcome.kept_events}
            if codes == {ErrorCode.TIMESTAMP_TOO_FAR_IN_PAST}:
                outcome.action = Action.SKIPPED
            outcome.describe()
        return Plan(message, ready, letters, outcome)

    def _send_and_settle(
        self, plans: list[Plan], remaining: Callable[[], float] | None
    ) -> tuple[list[Outcome], bool]:
        """Send what the plans can, then settle each; True with the outcomes when the time
        ran out inside a message."""
        try:
            settled = self._drop_delivered(plans)
        except LedgerUnavailable as error:  # nothing goes that Stripe may have already
            for plan in plans:
                if plan.ready:
                    plan.outcome.stays_whole(LEDGER_UNREADABLE, f"the ledger: {error}")
                    plan.ready, plan.letters = [], []
            return [p.outcome for p in plans], False
        sendable = [p for p in plans if p.ready]
        if self.dry_run:
            for plan in sendable:
                plan.outcome.action = Action.WOULD_REPLAY
                done = f"{len(plan.ready)} events via {self.resend.via}"
                if plan.outcome.already_delivered:
                    done += f" ({len(plan.outcome.already_delivered)} {ALREADY_DELIVERED})"
                plan.outcome.describe(done)
            for plan in settled:
                plan.outcome.action = Action.WOULD_SETTLE
                plan.outcome.describe(ALREADY_DELIVERED)
            return [p.outcome for p in plans], False
        sent = self.resend.send(sendable, remaining, self.reader.keep_hidden)
        settlements = [
            self._judge(plan, result) for plan, result in zip(sendable, sent, strict=True)
        ]
        settlements += [self._settle_delivered(plan) for plan in settled]
        self._write(settlements)
        return [p.outcome for p in plans], any(s.stopped for s in settlements)

    def _drop_delivered(self, plans: list[Plan]) -> list[Plan]:
        """Take the events the ledger says Stripe has out of each plan's ready ones (noted in
        its outcome); the plans left with nothing to send that had some, to be settled."""
        chosen = [
            (plan.message, [e.identifier for e in plan.ready if e.identifier]) for plan in plans
        ]
        delivered_of = delivered_among(self.ledger, chosen)
        settled = []
        for plan in plans:
            delivered = delivered_of.get(plan.message.message_id, set())
            had = bool(plan.ready)
            plan.outcome.already_delivered = [
                e.identifier for e in plan.ready if e.identifier in delivered and e.identifier
            ]
            plan.ready = [e for e in plan.ready if e.identifier not in delivered]
            if self.ledger is not None:  # the ledger, not Stripe's 24 hours, protects them
                warnings = plan.outcome.warnings
                warnings[:] = [w for w in warnings if w != PAST_DEDUP_WINDOW]
                warning = past_dedup_warning(plan.message, has_ledger=True)
                if warning and plan.ready:  # unless Stripe may have them without answering
                    warnings.append(warning)
            plan.outcome.identifiers = [e.identifier for e in plan.ready if e.identifier]
            if had and not plan.ready:
                settled.append(plan)
        return settled

    def _settle_delivered(self, plan: Plan) -> _Settlement:
        """A message whose sendable events Stripe has: it leaves, its other events as letters."""
        if not plan.letters:
            plan.outcome.action = Action.ALREADY_DELIVERED
        plan.outcome.describe(ALREADY_DELIVERED)
        return _Settlement(plan, list(plan.letters), leaves=True)

    def _judge(self, plan: Plan, sent: Sent) -> _Settlement:
        """What the resend's answer makes of a plan: the letters that stay, and whether the
        message leaves the DLQ (once they are in)."""
        outcome, message, via = plan.outcome, plan.message, self.resend.via
        if sent.error is not None:
            outcome.stays_whole("aws_error", sent.error)
            return _Settlement(plan)
        settlement = _Settlement(plan, list(plan.letters), leaves=True)
        for event, answer in sent.refused:  # Stripe's reason, the corrected body
            refusal = Rejection(answer_code(answer), answer.error)
            outcome.keep(event, refusal.code, refusal.message)
            settlement.letters.append(event_letter(message, event, refusal))
        outcome.identifiers = [e.identifier for e in sent.counted if e.identifier]
        if sent.unrecorded is not None:
            outcome.warnings.append(f"{NOT_RECORDED} ({sent.unrecorded})")
        if sent.rest:
            settlement.stopped = sent.rest_error is None and (
                sent.failure is None or sent.unanswered
            )
            reason = _rest_reason(message, sent.failure)
            for n, event in enumerate(sent.rest):
                if sent.rest_error is not None:
                    outcome.keep(event, message.code, f"{NOT_QUEUED}: {sent.rest_error}")
                elif sent.failure is None:
                    outcome.keep(event, message.code, OUT_OF_TIME)
                elif not sent.unanswered:
                    outcome.keep(event, answer_code(sent.failure), sent.failure.error)
                else:  # the first went out unanswered; those after it were not sent
                    detail = OUT_OF_TIME if n else UNANSWERED_IN_TIME
                    outcome.keep(event, answer_code(sent.failure), detail)
            if not (sent.counted or settlement.letters or reason.code != message.code):
                outcome.describe()
                return _Settlement(plan, stopped=settlement.stopped)  # it stays as it is
            settlement.letters.extend(rest_letters(message, sent.rest, reason))
        if not settlement.letters:
            outcome.action = Action.REPLAYED
        elif sent.counted:
            outcome.action = Action.PARTLY_REPLAYED
        done = f"{len(sent.counted)} events via {via}" if sent.counted else ""
        if outcome.already_delivered:
            done += f" ({len(outcome.already_delivered)} {ALREADY_DELIVERED})"
        outcome.describe(done.strip())
        return settlement

    def _write(self, settlements: list[_Settlement]) -> None:
        """The letters of every message that leaves, then the messages (deleted only once
        all their letters are in)."""
        leaving = [s for s in settlements if s.leaves]
        unsent = set(self.reader.put_letters([x for s in leaving for x in s.letters]))
        deletable = []
        for settlement in leaving:
            missing = sum(1 for letter in settlement.letters if letter in unsent)
            if missing:
                total = len(settlement.letters)
                self._stays(
                    settlement, f"LettersNotSent: {missing} of {total} letters could not be put in"
                )
            else:
                deletable.append(settlement)
        refused = self.reader.delete([s.plan.message for s in deletable])
        for settlement in deletable:
            why = refused.get(settlement.plan.message.message_id)
            if why is not None:
                self._stays(settlement, f"NotDeleted: {why}")

    def _stays(self, settlement: _Settlement, why: str) -> None:
        outcome = settlement.plan.outcome
        moved = f"{len(outcome.identifiers)} events were sent via {self.resend.via}"
        outcome.stays_whole("aws_error", why, moved if outcome.identifiers else "")


def _rest_reason(message: DlqMessage, failure: StripeAnswer | None) -> Rejection:
    """Why the unsent rest of a message stays. After a persistent 409, 429, 5xx or no answer
    it carries that (its code, `sync replay: ...`) in place of the message's own: the DLQ
    says what happened last. Out of time, or after an answer that is no fault of Stripe's
    load nor of the event (401, 403, 404: the tool's setup), it keeps the message's own."""
    if failure is not None and failure.kind in (Kind.TRANSIENT, Kind.RATE_LIMITED):
        return Rejection(answer_code(failure), f"{SYNC_REPLAY_PREFIX}{failure.error}")
    return own_reason(message)


def _outcome_unknown(answer: StripeAnswer) -> bool:
    """No answer, or a 5xx: Stripe may have counted the event (it calls a 500's outcome
    indeterminate), so a letter must not say it was never sent."""
    return answer.status == 0 or answer.status >= 500
