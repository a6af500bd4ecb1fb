"""Stripe's asynchronous rejections, brought back as dead letters.

Stripe answers the stream 200 for "received", not "counted": an event for an event name
without a meter, an archived meter or an unknown customer is dropped later, and Stripe says
so only in an error report, a thin event (`v1.billing.meter.error_report_triggered`,
`v1.billing.meter.no_meter_found`) that counts the failures of a validation window per code,
with a few samples. The pushed notification holds no data: the event is fetched
(`GET /v2/core/events/{id}`, with the secret key) and each sample becomes a dead letter with
Stripe's code and message, the identifier, the meter and the window; with the event's body
when the project knows it (`BodyLookup`), marked "reported by Stripe, body unknown" otherwise.

Each Stripe event is processed once (EventBridge and webhooks deliver at least once, and
`errors pull` reads the same events): Powertools Idempotency keeps a record per event id in
DynamoDB, claimed with a conditional write before the work and kept 31 days, longer than
Stripe keeps events. A claim whose run failed is released, so a retry redoes it; a claim
whose run died (a timeout) expires with that run's time. An event Stripe will not give
(older than its 30 days, or refused) is acknowledged as unavailable, never retried forever.

Nothing here logs or emits metrics: the function and the CLI each report the `Outcome`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import quote

from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
)

from meter_relay.dead_letter import (
    ATTR_METER_ID,
    ATTR_REPORTED_BY,
    ATTR_STRIPE_EVENT_ID,
    ATTR_VALIDATION_END,
    ATTR_VALIDATION_START,
    DeadLetter,
    DeadLetterQueue,
)
from meter_relay.events import format_timestamp, parse_rfc3339
from meter_relay.ledger_store import (
    LedgerBucket,
    LedgerUnavailable,
    RejectionLine,
    record_rejections,
)
from meter_relay.stripe_client import Kind, StripeApi

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

ERROR_REPORT_TRIGGERED = "v1.billing.meter.error_report_triggered"
NO_METER_FOUND = "v1.billing.meter.no_meter_found"
REPORT_TYPES = (ERROR_REPORT_TRIGGERED, NO_METER_FOUND)
EVENTS_PATH = "/v2/core/events"
PAGE_SIZE = 100  # the list's largest page

REPORTED_BY_STRIPE = "stripe"  # ATTR_REPORTED_BY of a letter whose body is the event's own
BODY_UNKNOWN = "reported by Stripe, body unknown"
REPORTED_BY_STRIPE_BODY_UNKNOWN = "stripe, body unknown"
UNKNOWN_CODE = "unknown"  # an error type without a code (Stripe's codes are kept as given)

REMEMBER_SECONDS = 31 * 86_400  # Stripe keeps events 30 days: a pull can reach no older one
IDEMPOTENCY_KEY_PREFIX = "stripe-error-report"  # the same for the function and the CLI
# Stripe will not give this event, ever (gone after 30 days, another account's or mode's). A
# 400 is not among them: a request this side got wrong (a Stripe-Version, a key's scope) would
# otherwise acknowledge every report unread; it is retried, as a 5xx is.
UNAVAILABLE_STATUSES = frozenset({404, 410})


class NotificationError(ValueError):
    """A body that is not a v2 event notification."""


class EventUnavailable(Exception):
    """Stripe will not give the event (gone after 30 days, another account's or mode's):
    acknowledged, never retried."""


class FetchFailed(Exception):
    """Stripe could not be asked, or did not answer usefully (5xx, 429, a timeout, a key it
    refused): retry later. `status` is 0 when no HTTP answer came."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class EventIncomplete(FetchFailed):
    """Stripe answered the event without its data: retried by the function (Stripe and
    EventBridge deliver it again), set aside by a pull, which goes on with the others."""


class LettersNotSent(Exception):
    """SQS did not take every letter of a report: the report is retried whole (the letters
    sent already come again: a duplicate letter, never a lost one)."""


# ----- what Stripe sends --------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class Notification:
    """A thin event as pushed (a webhook's body, an EventBridge event's detail): no data."""

    id: str
    type: str
    created: str | None = None

    @classmethod
    def from_document(cls, document: Any) -> Notification:
        if not isinstance(document, dict):
            raise NotificationError("not a JSON object")
        kind = document.get("object", "v2.core.event")
        if kind != "v2.core.event":  # a v1 snapshot event ("event") is another API's
            raise NotificationError(f"not a v2 event notification (object {kind!r})")
        event_id, event_type = _text(document.get("id")), _text(document.get("type"))
        if event_id is None or event_type is None:
            raise NotificationError("a v2 event notification has a string id and type")
        return cls(event_id, event_type, _text(document.get("created")))

    @classmethod
    def from_body(cls, body: bytes) -> Notification:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise NotificationError("not JSON") from None
        return cls.from_document(document)

    @property
    def is_error_report(self) -> bool:
        return self.type in REPORT_TYPES


@dataclass(frozen=True)
class SampleError:
    code: str
    message: str
    identifier: str | None


def _identifier(request: Any) -> str | None:
    """`request.identifier`, as every SDK since 2024-10 types it; else `idempotency_key`, then
    `id`, as an older docs example shows (its `id`, empty there, names Stripe's request)."""
    if not isinstance(request, dict):
        return None
    for name in ("identifier", "idempotency_key", "id"):
        found = _text(request.get(name))
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class ErrorReport:
    """A fetched error report: Stripe's counts per code and its samples, read tolerantly (a
    field missing or of another type never stops the samples that are there)."""

    event_id: str
    type: str
    meter_id: str | None
    validation_start: str | None
    validation_end: str | None
    error_count: int | None  # Stripe's total for the window
    counts: dict[str, int] = field(default_factory=dict)  # per code, in Stripe's order
    samples: tuple[SampleError, ...] = ()
    created: str | None = None  # when Stripe made the report (its event's `created`)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ErrorReport:
        data = _object(event.get("data"))
        reason = _object(data.get("reason"))
        related = event.get("related_object")  # {} or null for no_meter_found
        counts: dict[str, int] = {}
        samples: list[SampleError] = []
        error_types = reason.get("error_types")
        for error_type in error_types if isinstance(error_types, list) else []:
            if not isinstance(error_type, dict):
                continue
            code = _text(error_type.get("code")) or UNKNOWN_CODE
            counts[code] = counts.get(code, 0) + (_count(error_type.get("error_count")) or 0)
            sample_errors = error_type.get("sample_errors")
            for sample in sample_errors if isinstance(sample_errors, list) else []:
                if isinstance(sample, dict):
                    message = _text(sample.get("error_message")) or ""
                    samples.append(SampleError(code, message, _identifier(sample.get("request"))))
        return cls(
            event_id=str(event.get("id", "")),
            type=str(event.get("type", "")),
            meter_id=_text(related.get("id")) if isinstance(related, dict) else None,
            validation_start=_text(data.get("validation_start")),
            validation_end=_text(data.get("validation_end")),
            error_count=_count(reason.get("error_count")),
            counts=counts,
            samples=tuple(samples),
            created=_text(event.get("created")),
        )


# ----- letters ------------------------------------------------------------------------------------


class BodyLookup(Protocol):
    """What the project sent under these identifiers, Stripe having received them between
    `start` and `end` (the report's validation window): identifier -> body, for those known
    (ledger_store.LedgerBodies reads the delivery ledger)."""

    def bodies(
        self, identifiers: Sequence[str], start: datetime | None, end: datetime | None
    ) -> Mapping[str, str]: ...


class NoBodies:
    """No record of what was sent: every reported event's body is unknown."""

    def bodies(
        self, identifiers: Sequence[str], start: datetime | None, end: datetime | None
    ) -> Mapping[str, str]:
        return {}


def _known_body(body: str, identifier: str) -> tuple[str, str | None]:
    """The body with its identifier written in (as every letter's is), and its event name."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body, None
    if not isinstance(document, dict):
        return body, None
    if "identifier" not in document:
        document["identifier"] = identifier
        body = json.dumps(document, separators=(",", ":"))
    return body, _text(document.get("event_name"))


def _unknown_body(report: ErrorReport, sample: SampleError) -> str:
    """What is known of an event whose body is not: what Stripe said, and where."""
    return json.dumps(
        {
            "body": None,
            "note": BODY_UNKNOWN,
            "identifier": sample.identifier,
            "code": sample.code,
            "error_message": sample.message,
            "stripe_event": report.event_id,
            "event_type": report.type,
            "meter": report.meter_id,
            "validation_start": report.validation_start,
            "validation_end": report.validation_end,
        },
        separators=(",", ":"),
    )


def report_letter(report: ErrorReport, sample: SampleError, body: str | None) -> DeadLetter:
    """One sample's letter. FirstSeen is the window's start: Stripe received the event in it."""
    event_name = None
    if body is not None and sample.identifier is not None:
        body, event_name = _known_body(body, sample.identifier)
    more = {
        ATTR_STRIPE_EVENT_ID: report.event_id,
        ATTR_METER_ID: report.meter_id,
        ATTR_VALIDATION_START: report.validation_start,
        ATTR_VALIDATION_END: report.validation_end,
        ATTR_REPORTED_BY: REPORTED_BY_STRIPE if body else REPORTED_BY_STRIPE_BODY_UNKNOWN,
    }
    return DeadLetter(
        body=body or _unknown_body(report, sample),
        code=sample.code,
        message=sample.message,
        source_message_id="",  # no SQS message of ours: the Stripe event id says where from
        first_seen=report.validation_start or "",
        event_name=event_name,
        identifier=sample.identifier,
        more=tuple((name, text) for name, text in more.items() if text),
    )


def report_letters(report: ErrorReport, bodies: BodyLookup) -> list[DeadLetter]:
    identifiers = [sample.identifier for sample in report.samples if sample.identifier]
    known = bodies.bodies(
        identifiers,
        parse_rfc3339(report.validation_start or ""),
        parse_rfc3339(report.validation_end or ""),
    )
    return [
        report_letter(report, sample, known.get(sample.identifier) if sample.identifier else None)
        for sample in report.samples
    ]


def rejection_lines(report: ErrorReport, reported_at: datetime) -> list[RejectionLine]:
    """The report's samples as the delivery ledger keeps them (those that name an event)."""
    at = format_timestamp(reported_at)
    return [
        RejectionLine(
            identifier=sample.identifier,
            code=sample.code,
            message=sample.message,
            stripe_event_id=report.event_id,
            event_type=report.type,
            reported_at=at,
            meter_id=report.meter_id,
            validation_start=report.validation_start,
            validation_end=report.validation_end,
        )
        for sample in report.samples
        if sample.identifier
    ]


# ----- Stripe's events ----------------------------------------------------------------------------


class StripeEvents:
    """`GET /v2/core/events[/{id}]` with the secret key, which `api` reads only when a call
    needs it (a duplicate delivery never reads it)."""

    def __init__(self, api: Callable[[], StripeApi], timeout: float) -> None:
        self._api = api
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = self._api().get(path, params, self.timeout)
        if answer.kind is Kind.OK and answer.body is not None:
            return answer.body
        if answer.status in UNAVAILABLE_STATUSES:
            raise EventUnavailable(answer.error)
        raise FetchFailed(answer.error, answer.status)

    def fetch(self, event_id: str) -> dict[str, Any]:
        """The event with its data; EventUnavailable or FetchFailed. An event without its data
        object is not processed (it would be remembered as a report of no samples)."""
        event = self._get(f"{EVENTS_PATH}/{quote(event_id, safe='')}", {})
        if not isinstance(event.get("data"), dict):
            raise EventIncomplete(f"Stripe answered event {event_id} without its data")
        return event

    def listed(
        self, types: Sequence[str], since: datetime, until: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every event of these types created in [since, until), page by page, newest first."""
        params: dict[str, Any] = {f"types[{i}]": name for i, name in enumerate(types)}
        params["created[gte]"] = format_timestamp(since)
        if until is not None:
            params["created[lt]"] = format_timestamp(until)
        params["limit"] = PAGE_SIZE
        path: str | None = EVENTS_PATH
        while path is not None:
            try:
                page = self._get(path, params)
            except EventUnavailable as refused:  # a list refused is not one event's fate
                raise FetchFailed(f"Stripe refused the list: {refused}", 400) from None
            data = page.get("data")
            for event in data if isinstance(data, list) else []:
                if isinstance(event, dict):
                    yield event
            path, params = _text(page.get("next_page_url")), {}  # it carries the filters


# ----- processing, once per Stripe event ----------------------------------------------------------

PROCESSED, DUPLICATE, UNAVAILABLE = "processed", "duplicate", "unavailable"


@dataclass(frozen=True)
class Outcome:
    """What became of one Stripe event (stored by the idempotency record, read back for a
    duplicate)."""

    event_id: str
    status: str  # processed | duplicate | unavailable
    type: str = ""
    meter_id: str | None = None
    error_count: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    letters: int = 0
    bodies_known: int = 0
    reason: str = ""  # why it is unavailable
    unrecorded: int = 0  # samples the delivery ledger lacks (its write failed)

    @property
    def counted(self) -> int:
        return sum(self.counts.values())

    @property
    def counts_match(self) -> bool:
        """Whether the counts per code add up to Stripe's total, as they should."""
        return self.status != PROCESSED or self.error_count == self.counted

    @property
    def rejected(self) -> int:
        """Events Stripe rejected in the window: its total, else what the codes add up to."""
        return self.counted if self.error_count is None else self.error_count

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "status": self.status,
            "type": self.type,
            "meter_id": self.meter_id,
            "error_count": self.error_count,
            "counts": dict(self.counts),
            "letters": self.letters,
            "bodies_known": self.bodies_known,
            "reason": self.reason,
            "unrecorded": self.unrecorded,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Outcome:
        return cls(
            event_id=str(document["event_id"]),
            status=str(document["status"]),
            type=str(document.get("type", "")),
            meter_id=document.get("meter_id"),
            error_count=document.get("error_count"),
            counts={str(code): int(n) for code, n in (document.get("counts") or {}).items()},
            letters=int(document.get("letters", 0)),
            bodies_known=int(document.get("bodies_known", 0)),
            reason=str(document.get("reason", "")),
            unrecorded=int(document.get("unrecorded", 0)),
        )


def _seen_before(response: Any, idempotent_data: DataRecord) -> Any:
    """Powertools' hook for a response read from the store: the event was processed before."""
    return {**response, "status": DUPLICATE} if isinstance(response, dict) else response


class TimeBudget:
    """Stands for a LambdaContext where there is none (the CLI): how long a claim on an event
    may be held before another run may take it over."""

    def __init__(self, seconds: float) -> None:
        self._until = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._until - time.monotonic()) * 1000))


class ReportProcessor:
    """One Stripe event's letters, written once: fetched (unless given), turned into letters,
    sent to the DLQ, remembered. A failure (Stripe, SQS) raises and releases the claim."""

    def __init__(
        self,
        events: StripeEvents,
        dead_letters: DeadLetterQueue,
        store: BasePersistenceLayer,
        bodies: BodyLookup | None = None,
        *,
        ledger: LedgerBucket | None = None,
        remember_seconds: int = REMEMBER_SECONDS,
    ) -> None:
        self.events = events
        self.dead_letters = dead_letters
        self.bodies: BodyLookup = bodies or NoBodies()
        self.ledger = ledger  # where the samples are recorded (rejections/), for trace
        self._config = IdempotencyConfig(
            expires_after_seconds=remember_seconds, response_hook=_seen_before
        )
        self._once = idempotent_function(
            self._process,
            data_keyword_argument="event_id",
            persistence_store=store,
            config=self._config,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )

    def process(
        self,
        event_id: str,
        context: LambdaContext | TimeBudget,
        *,
        fetched: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """The event's outcome; IdempotencyAlreadyInProgressError while another run holds it,
        FetchFailed, LettersNotSent or an AWS error when it must be retried."""
        self._config.register_lambda_context(cast("LambdaContext", context))

        def time_left() -> float:
            return context.get_remaining_time_in_millis() / 1000 - 1.0

        try:
            result = self._once(event_id=event_id, fetched=fetched, time_left=time_left)
        except EventUnavailable as unavailable:
            # not remembered (the claim is released): a 404 may be a key of another account
            # rather than an event past Stripe's 30 days, and a pull after the fix must redo it
            return Outcome(event_id, UNAVAILABLE, reason=str(unavailable))
        return Outcome.from_json(result)

    def _process(
        self,
        *,
        event_id: str,
        fetched: Mapping[str, Any] | None,
        time_left: Callable[[], float],
    ) -> dict[str, Any]:
        # a listed event is used as it is only with its data object: else fetched by its id
        event = fetched if fetched is not None and isinstance(fetched.get("data"), dict) else None
        event = event or self.events.fetch(event_id)  # EventUnavailable: see process()
        report = ErrorReport.from_event({**event, "id": event_id})
        letters = report_letters(report, self.bodies)
        unsent = self.dead_letters.send(letters, time_left)
        if unsent:
            raise LettersNotSent(f"SQS took {len(letters) - len(unsent)} of {len(letters)} letters")
        known = sum(
            1 for letter in letters if dict(letter.more)[ATTR_REPORTED_BY] == REPORTED_BY_STRIPE
        )
        unrecorded = self._record(report)
        return Outcome(
            event_id,
            PROCESSED,
            type=report.type,
            meter_id=report.meter_id,
            error_count=report.error_count,
            counts=report.counts,
            letters=len(letters),
            bodies_known=known,
            unrecorded=unrecorded,
        ).to_json()

    def _record(self, report: ErrorReport) -> int:
        """The samples in the ledger (after the letters: the DLQ comes first); how many could
        not be recorded. One object per Stripe event: a report processed again rewrites it."""
        # when Stripe reported them, the same however often the report is processed: a
        # delivery after it (a replay) is one Stripe did not reject
        reported = parse_rfc3339(report.created or "") or datetime.now(UTC)
        lines = rejection_lines(report, reported)
        if self.ledger is None or not lines:
            return 0
        try:
            record_rejections(self.ledger, report.event_id, lines)
        except LedgerUnavailable:
            return len(lines)
        return 0


# ----- errors pull: the same events, read from Stripe's list -------------------------------------

PULL_CLAIM_SECONDS = 120  # how long a pull holds one event before another run may take it


@dataclass
class PullSummary:
    outcomes: list[Outcome] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # held by another run: pull again later
    incomplete: list[str] = field(default_factory=list)  # Stripe gave them without their data


def pull(
    events: StripeEvents,
    processor: ReportProcessor,
    since: datetime,
    until: datetime | None = None,
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> PullSummary:
    """Every error report Stripe created in [since, until), processed as the function does: an
    event it (or an earlier pull) processed is a duplicate, and writes nothing again. Stripe
    unreachable (FetchFailed) or SQS failing stops the pull; what it did is remembered."""
    summary = PullSummary()
    for event in events.listed(REPORT_TYPES, since, until):
        event_id = _text(event.get("id"))
        if event_id is None:
            continue
        try:
            outcome = processor.process(event_id, TimeBudget(PULL_CLAIM_SECONDS), fetched=event)
        except IdempotencyAlreadyInProgressError:
            summary.busy.append(event_id)
            continue
        except EventIncomplete:  # not remembered: a later pull tries it again
            summary.incomplete.append(event_id)
            continue
        summary.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return summary
