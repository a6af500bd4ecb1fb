"""The message contract: parsing, normalisation and validation of usage events.

A message body is one meter event in Stripe's v2 shape or an envelope `{"events": [...]}`.
Form is normalised (numbers in the payload become strings, epoch seconds become RFC 3339);
anything Stripe would certainly reject is judged here, with Stripe's own error code, so that it
is dead-lettered before it costs a call or blocks its batch. `Judge.read` is the one way in
(the forwarder calls its two halves, `read_short` and `read_in_full`, to read a record's send
time only for the second, and judges runs of single events together first, `read_singles`,
which reads each as `read_short` does); the envelope rule (`envelope_events`) and the
identifier rule (`identifier_of`) live here only.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import msgspec

if TYPE_CHECKING:
    from meter_relay.catalog import Meter

MAX_IDENTIFIER_LENGTH = 100
MAX_TIMESTAMP_AGE = timedelta(days=35)
MAX_TIMESTAMP_LEAD = timedelta(minutes=5)
DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"
EVENT_FIELDS = frozenset({"event_name", "payload", "identifier", "timestamp"})

ValueRule = Literal["positive_integer", "decimal"]

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_POSITIVE_INTEGER = re.compile(r"^[0-9]+\Z")  # not $: it lets "5\n" through
# a number as JSON writes one, unsigned: Decimal() alone also takes " 5 ", "1_000" and "٣"
_DECIMAL_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
_DECODER = json.JSONDecoder()  # json.loads without its per-call argument handling
_COMPACT = json.JSONEncoder(separators=(",", ":"))
UNREAD: Any = object()  # what `decode_body` gives for a body that is not exactly one document


class _StripeForm(msgspec.Struct, forbid_unknown_fields=True):
    """An event exactly in Stripe's form (every field, each of Stripe's type), as msgspec
    decodes and checks it in one C pass; anything else fails to decode and is read in full."""

    event_name: str
    payload: dict[str, str]
    identifier: str
    timestamp: str


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    """An envelope of events in Stripe's form, decoded and checked in the same C pass."""

    events: list[_StripeForm]


_SINGLE = msgspec.json.Decoder(_StripeForm)
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_ENCODER = msgspec.json.Encoder()
# a body msgspec cannot take as it is (a lone surrogate cannot be UTF-8, nesting too deep) is
# read in full
_UNDECODABLE = (msgspec.DecodeError, UnicodeEncodeError, RecursionError)


class ErrorCode(StrEnum):
    """Why an event is dead-lettered. Where Stripe has a code for the case, it is Stripe's."""

    NO_METER = "no_meter"
    ARCHIVED_METER = "archived_meter"
    DUPLICATE_IDENTIFIER_IN_BATCH = "duplicate_identifier_in_batch"
    REQUEST_TOO_LARGE = "request_too_large"
    MESSAGE_NOT_JSON = "message_not_json"
    MESSAGE_NOT_CONTRACT = "message_not_contract"
    PARAMETER_MISSING = "parameter_missing"
    PARAMETER_INVALID = "parameter_invalid"
    PARAMETER_UNKNOWN = "parameter_unknown"
    PAYLOAD_NO_CUSTOMER_DEFINED = "payload_no_customer_defined"
    PAYLOAD_NO_VALUE_DEFINED = "payload_no_value_defined"
    PAYLOAD_INVALID_VALUE = "payload_invalid_value"
    TIMESTAMP_TOO_FAR_IN_PAST = "timestamp_too_far_in_past"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A permanent failure: a code (Stripe's where it has one), a readable message, the field."""

    code: str
    message: str
    param: str | None = None


class EventRejected(Exception):
    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.rejection = rejection


def _reject(code: ErrorCode, message: str, param: str | None = None) -> EventRejected:
    return EventRejected(Rejection(code.value, message, param))


@dataclass(frozen=True, slots=True)
class MeterKeys:
    """Where a meter finds the customer and the value in an event's payload."""

    customer_key: str = DEFAULT_CUSTOMER_KEY
    value_key: str = DEFAULT_VALUE_KEY


@dataclass(frozen=True)
class ValidationRules:
    """Stripe's rules as configured for this account: the account's meters by event_name
    (`meters`, from the meter catalog; None when there is none to go by), payload keys that
    override the meters' own (METER_KEYS), and the value rule."""

    meter_keys: Mapping[str, MeterKeys] = field(default_factory=dict)
    value_rule: ValueRule = "positive_integer"
    meters: Mapping[str, Meter] | None = None

    def keys_for(self, event_name: str) -> MeterKeys:
        keys = self.meter_keys.get(event_name)
        if keys is not None:
            return keys
        meter = self.meters.get(event_name) if self.meters is not None else None
        if meter is None:
            return _DEFAULT_KEYS
        return MeterKeys(meter.customer_key, meter.value_key)

    def meter_refusal(self, event_name: str) -> Rejection | None:
        """Stripe's own refusal of an event_name whose meter is missing or archived (only
        with a catalog of the account's meters to go by)."""
        if self.meters is None:
            return None
        meter = self.meters.get(event_name)
        if meter is None:
            return Rejection(
                ErrorCode.NO_METER,
                f"no meter of the account has event_name {event_name[:100]!r}",
                "event_name",
            )
        if not meter.active:
            return Rejection(
                ErrorCode.ARCHIVED_METER,
                f"the meter of event_name {event_name[:100]!r} ({meter.meter_id}) is archived",
                "event_name",
            )
        return None

    def with_meters(self, meters: Mapping[str, Meter] | None) -> ValidationRules:
        return ValidationRules(self.meter_keys, self.value_rule, meters)

    def with_keys_of(self, meters: Mapping[str, Meter]) -> ValidationRules:
        """Each meter's own payload keys, METER_KEYS over them, without judging the meters
        themselves (the operator tools: the forwarder and Stripe judge those)."""
        keys = {name: MeterKeys(m.customer_key, m.value_key) for name, m in meters.items()}
        return ValidationRules({**keys, **self.meter_keys}, self.value_rule, self.meters)

    @classmethod
    def from_settings(cls, meter_keys_json: str, value_rule: str) -> ValidationRules:
        """From METER_KEYS (JSON: {event_name: {"customer_key", "value_key"}}) and VALUE_RULE."""
        try:
            raw = json.loads(meter_keys_json or "{}")
        except ValueError as error:
            raise ValueError(f"METER_KEYS is not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError("METER_KEYS must be a JSON object keyed by event_name")
        keys = {}
        for name, spec in raw.items():
            if (
                not isinstance(spec, dict)
                or set(spec) - {"customer_key", "value_key"}
                or not all(isinstance(key, str) and key for key in spec.values())
            ):
                raise ValueError(
                    f"METER_KEYS[{name!r}] must be an object with customer_key and/or value_key"
                    " (non-empty strings)"
                )
            keys[name] = MeterKeys(
                spec.get("customer_key", DEFAULT_CUSTOMER_KEY),
                spec.get("value_key", DEFAULT_VALUE_KEY),
            )
        if value_rule not in ("positive_integer", "decimal"):
            raise ValueError(f"VALUE_RULE must be positive_integer or decimal, not {value_rule!r}")
        rule: ValueRule = "decimal" if value_rule == "decimal" else "positive_integer"
        return cls(keys, rule)


_DEFAULT_KEYS = MeterKeys()


class MeterEvent(msgspec.Struct, omit_defaults=True, gc=False):
    """A normalised event, ready for Stripe: payload values are strings, timestamp RFC 3339.

    `source` is the event's JSON text as the producer wrote it, kept only when it is a
    message's whole body and exactly Stripe's form: a stream call then carries it as it is,
    and an event without one as `stripe_text()` (with the ledger on, an envelope's events keep
    the text their first call encoded); the ledger records the same text. A msgspec
    Struct: built in half the time of a slotted dataclass, and without the cyclic collector's
    tracking (it refers to nothing that could refer back to it).
    """

    event_name: str
    payload: dict[str, str]
    identifier: str
    timestamp: str
    source: str | None = None

    def to_stripe(self) -> dict[str, Any]:
        return {
            "event_name": self.event_name,
            "payload": self.payload,
            "identifier": self.identifier,
            "timestamp": self.timestamp,
        }

    def stripe_text(self) -> str:
        """The event as a stream call carries it when it kept no text of its own: compact
        JSON on one line, msgspec's (json's, with its \\u escape, for a lone surrogate, which
        UTF-8 cannot carry)."""
        return compact_json(self.to_stripe())

    def sent_text(self) -> str:
        """The event's text in its stream call (and its ledger line): its own, else
        `stripe_text()`."""
        return self.stripe_text() if self.source is None else self.source


@dataclass(slots=True)
class ParsedEvent:
    """One event of a message: normalised and valid, or rejected with the producer's form kept."""

    index: int
    identifier: str | None
    event: MeterEvent | None
    raw: Any
    rejection: Rejection | None = None
    sent_at: datetime | None = None  # the default timestamp (kept for a rejected event's letter)

    @property
    def event_name(self) -> str | None:
        if self.event is not None:
            return self.event.event_name
        name = self.raw.get("event_name") if isinstance(self.raw, dict) else None
        return name if isinstance(name, str) else None

    def dead_letter_body(self) -> str:
        """The event as the DLQ keeps it: normalised if it was, else as sent with what the
        letter's own messageId and SentTimestamp would change written in (the identifier, and
        the default timestamp: when the producer sent the message, not when it was
        dead-lettered). One with a broken identifier can never be sent: it stays untouched."""
        if self.event is not None:
            return json.dumps(self.event.to_stripe())
        if not isinstance(self.raw, dict) or self.identifier is None:
            return json.dumps(self.raw)
        body = {**self.raw, "identifier": self.identifier}
        if body.get("timestamp") is None and self.sent_at is not None:
            body["timestamp"] = format_timestamp(self.sent_at)
        return json.dumps(body)


@dataclass(slots=True)
class ParsedMessage:
    """What one SQS message holds. `rejection` set: the body itself is unusable."""

    message_id: str
    events: list[ParsedEvent]
    rejection: Rejection | None = None


def compact_json(value: Any) -> str:
    """`value` as compact JSON on one line: msgspec's, or json's (with its \\u escape) where it
    holds a lone surrogate, which UTF-8 cannot carry."""
    try:
        return _ENCODER.encode(value).decode()
    except UnicodeEncodeError:
        return _COMPACT.encode(value)


def stream_body(events: Sequence[MeterEvent]) -> bytes:
    """A stream call's body: `{"events": [...]}`, each event its own text if it kept one (the
    common case for single-event messages), else its `stripe_text()`. When none kept one (an
    envelope's), msgspec encodes them all in one C call, to the same texts.

    Events without a text keep none after their call: the ledger splices the calls' bodies as
    they were sent, and encodes such events again only when it cannot (ledger.ledger_text).
    Keeping each envelope event's text, as it once did with the ledger on, cost the envelope
    forwarder 2.5% to 6% of its CPU, for texts the ledger then seldom read."""
    texts = [event.source for event in events]
    if None in texts:
        if texts.count(None) == len(texts):
            try:
                return _ENCODER.encode({"events": list(events)})
            except UnicodeEncodeError:
                pass  # a lone surrogate: that event's text is json's
        texts = [event.sent_text() for event in events]
    try:
        return ('{"events":[' + ",".join(cast("list[str]", texts)) + "]}").encode()
    except UnicodeEncodeError:  # a producer's text holding a lone surrogate: encoded again
        return ('{"events":[' + ",".join(event.stripe_text() for event in events) + "]}").encode()


def derive_identifier(message_id: str, index: int) -> str:
    """The identifier of an event that came without one: stable across redeliveries."""
    return f"{message_id}-{index}"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime | None:
    """A strict RFC 3339 date-time (what Stripe's `format: date-time` means), else None."""
    match = _RFC3339.match(text)
    if match is None:
        return None
    fraction = match.group(1)
    cleaned = text.replace("t", "T").replace("z", "Z")
    if fraction and len(fraction) > 7:  # Python takes at most microseconds
        cleaned = cleaned.replace(fraction, fraction[:7], 1)
    try:
        return datetime.fromisoformat(cleaned)
    except ValueError:
        return None


def parse_message(
    body: str,
    message_id: str,
    sent_at: datetime,
    rules: ValidationRules,
    now: datetime,
) -> ParsedMessage:
    """One SQS message body as `Judge.read` reads it, its one valid event (when it is read in
    the fewest steps) in a ParsedMessage too: for the tools and tests that want one shape."""
    read = Judge(rules, now).read(body, message_id, sent_at)
    if isinstance(read, ParsedMessage):
        return read
    events = read if isinstance(read, list) else [read]
    return ParsedMessage(
        message_id,
        [
            ParsedEvent(i, event.identifier, event, event.to_stripe())
            for i, event in enumerate(events)
        ],
    )


def decode_body(body: str) -> Any:
    """The body's JSON document when the body is exactly one (the common case: no whitespace
    around it); else UNREAD, and `parse_document` reads it again for its own error message."""
    try:
        document, end = _DECODER.raw_decode(body)
    except (ValueError, RecursionError):
        return UNREAD
    return document if end == len(body) else UNREAD


def envelope_events(document: Any) -> list[Any] | Rejection:
    """The events a message's JSON document holds: an envelope's, or the document as one event;
    a Rejection when it is neither (the message is unusable as a whole)."""
    if isinstance(document, dict) and "events" in document:
        raw_events = document["events"]
        if set(document) != {"events"}:
            extra = sorted(set(document) - {"events"})
            return Rejection(
                ErrorCode.MESSAGE_NOT_CONTRACT, f"an envelope holds only 'events', not {extra}"
            )
        if not isinstance(raw_events, list) or not raw_events:
            return Rejection(
                ErrorCode.MESSAGE_NOT_CONTRACT, "an envelope's 'events' is a non-empty array"
            )
        return raw_events
    if isinstance(document, dict):
        return [document]
    kind = type(document).__name__
    return Rejection(
        ErrorCode.MESSAGE_NOT_CONTRACT,
        f"body is a JSON {kind}, not an event object or an envelope",
    )


def parse_document(
    body: str, document: Any, message_id: str, sent_at: datetime, judge: Judge
) -> ParsedMessage:
    """The full reading of a message, from what `decode_body` made of the body."""
    try:
        if document is UNREAD:
            document = _DECODER.decode(body)  # surrounding whitespace, or its own error message
    except (ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        return ParsedMessage(
            message_id, [], Rejection(ErrorCode.MESSAGE_NOT_JSON, f"body is not JSON: {reason}")
        )
    raw_events = envelope_events(document)
    if isinstance(raw_events, Rejection):
        return ParsedMessage(message_id, [], raw_events)
    events = []
    for index, raw in enumerate(raw_events):
        event = judge.stripe_form(raw)
        if event is None:
            events.append(judge.normalise(raw, index, message_id, sent_at))
        else:
            events.append(ParsedEvent(index, event.identifier, event, raw))
    return ParsedMessage(message_id, events)


_IDENTIFIER = attrgetter("identifier")
_EVENT_NAME, _PAYLOAD, _TIMESTAMP = (
    attrgetter("event_name"),
    attrgetter("payload"),
    attrgetter("timestamp"),
)
_VALUE_KEY, _CUSTOMER_KEY = attrgetter("value_key"), attrgetter("customer_key")
_STRINGS_PER_EVENT = 7  # 4 keys, 3 values (the payload's are counted apart)


def _quotes_as_judged(payload_size: int) -> int:
    """The quotes in the text of an event that says exactly what was judged: every value being
    a string, two per key and per value."""
    return 2 * (_STRINGS_PER_EVENT + 2 * payload_size)


def _sent_as_is(text: str, event: MeterEvent) -> bool:
    """Whether an event's text may be sent as it is: only if it is the object alone and says
    exactly what was judged, not if it holds a key twice (the last one wins here; Stripe's
    parser need not agree), or escapes a quote."""
    return (
        text[:1] == "{"
        and text[-1:] == "}"
        and text.count('"') == _quotes_as_judged(len(event.payload))
    )


def _all_sent_as_is(texts: Sequence[str], payloads: Sequence[dict[str, str]]) -> bool:
    """`_sent_as_is` for every event of a run, by C loops (one comparison of the quotes when the
    payloads have one size, as a meter's events do)."""
    if not (
        all(map(str.startswith, texts, repeat("{"))) and all(map(str.endswith, texts, repeat("}")))
    ):
        return False
    quotes = list(map(str.count, texts, repeat('"')))
    sizes = set(map(len, payloads))
    if len(sizes) == 1:
        return quotes.count(_quotes_as_judged(sizes.pop())) == len(quotes)
    return quotes == list(map(_quotes_as_judged, map(len, payloads)))


class Singles(NamedTuple):
    """`Judge.read_singles`: the events of a run's first records (None: a record to read on
    its own); `usual`: none is None."""

    events: Sequence[MeterEvent | None]
    usual: bool


class Judge:
    """Stripe's rules for the events of one batch, as of one moment (`now` fixes the timestamp
    window): the short judgement of events already in Stripe's form, which is what producers
    send. A batch's events share a few event names and values, and at most a timestamp per
    millisecond: each is judged once per batch and kept in a dict that lives as long as the
    batch (an lru_cache would cost a call and a key per event)."""

    __slots__ = (
        "_earliest",
        "_first",
        "_keys",
        "_last_run_usual",
        "_latest",
        "_moments",
        "_timestamps",
        "_values",
        "now",
        "rules",
    )

    def __init__(self, rules: ValidationRules, now: datetime) -> None:
        self.rules = rules
        self.now = now
        self._earliest, self._latest = now - MAX_TIMESTAMP_AGE, now + MAX_TIMESTAMP_LEAD
        self._keys: dict[str, MeterKeys] = {}  # event names with a non-blank name
        self._values: dict[str | None, bool] = {}
        self._timestamps: dict[str, bool] = {}  # text -> within the window (the short path)
        self._moments: dict[str, datetime | None] = {}  # text -> its moment (the full path)
        # identifier -> the first valid event of the batch that holds it, and where it was
        self._first: dict[str, tuple[MeterEvent, str, int]] = {}
        self._last_run_usual = True  # the last run read_singles judged: every record usual

    def read(
        self, body: str, message_id: str, sent_at: datetime
    ) -> MeterEvent | list[MeterEvent] | ParsedMessage:
        """A message body, read once: `read_short`'s events, else `read_in_full`'s message."""
        short = self.read_short(body, message_id)
        return self.read_in_full(body, message_id, sent_at) if short is None else short

    def read_short(self, body: str, message_id: str) -> MeterEvent | list[MeterEvent] | None:
        """Nearly every body is one valid event in Stripe's form: that event alone (its text
        kept when it reads the same); an envelope of nothing but valid events in Stripe's form
        is those events, in order. None for anything else, which `read_in_full` reads. It needs
        no send time (only an event without a timestamp takes it): reading a record's
        attributes for every record cost the forwarder 4-6% of its CPU on single-event records."""
        if body[:1] == "\ufeff":
            body = body[1:]
        try:
            single: _StripeForm | None = _SINGLE.decode(body)
        except _UNDECODABLE:
            single = None
        if single is not None:
            event = self._judged(single)
            if event is not None and self._duplicate(event, message_id, 0) is None:
                if _sent_as_is(body, event):
                    event.source = body
                return event
            return None
        return self._envelope(body, message_id)

    def _envelope(self, body: str, message_id: str) -> list[MeterEvent] | None:
        """An envelope's events when every one is valid and in Stripe's form and holds an
        identifier of its own (in the envelope and the batch so far), else None. Its events
        are judged one by one; the identifiers are checked and kept by C loops (map, sets,
        zip), which took a third of the envelope's reading in Python."""
        try:
            forms = _ENVELOPE.decode(body).events
        except _UNDECODABLE:
            return None
        judged = list(map(self._judged, forms))
        if not judged or None in judged:
            return None
        events = cast("list[MeterEvent]", judged)
        identifiers = list(map(_IDENTIFIER, events))
        first = self._first
        if len(set(identifiers)) != len(events) or not first.keys().isdisjoint(identifiers):
            return None  # an identifier seen before: the full reading judges each
        where = zip(events, repeat(message_id), range(len(events)))
        first.update(zip(identifiers, where, strict=True))
        return events

    def read_singles(self, bodies: Sequence[str], message_ids: Sequence[str]) -> Singles:
        """The first records of a run (a stream call's worth) that are each one event in
        Stripe's form, judged together: the usual batch, where every record is a valid event
        sent as its own text with an identifier of its own, is judged by C loops over the run
        (map, sets; each distinct name, value and timestamp once), not a Python call per
        record: 10,000 records read in 13-15 ms instead of 20 (timed alone, the best of 40).

        Each record's event is as `read_short` gives it; None for a record the caller reads on
        its own, in its turn (an invalid event, a text that is not sent as it is, an identifier
        a record before it holds): no event judged together after it holds its identifier.
        The events stop before the first record msgspec cannot take as one event in Stripe's
        form (an envelope, an event in another form, a byte order mark), which the caller
        reads on its own, and the records after it."""
        forms: list[_StripeForm] = []
        with contextlib.suppress(*_UNDECODABLE, TypeError):  # TypeError: a body not a text
            forms.extend(map(_SINGLE.decode, bodies))  # up to the first it cannot take
        if not forms:
            return Singles([], usual=True)
        if len(forms) < len(bodies):
            bodies, message_ids = bodies[: len(forms)], message_ids[: len(forms)]
        # after a run with a record that was not usual, the next is judged record by record
        # until one has none: a batch of many invalid events would pay for both ways
        events = self._all_usual(forms, bodies) if self._last_run_usual else None
        if events is None:
            singles = self._each_usual(forms, bodies, message_ids)
            self._last_run_usual = singles.usual
            return singles
        where = zip(events, message_ids, repeat(0))
        self._first.update(zip(map(_IDENTIFIER, events), where, strict=True))
        return Singles(events, usual=True)

    def _all_usual(self, forms: list[_StripeForm], texts: Sequence[str]) -> list[MeterEvent] | None:
        """The events of a run whose every record is usual, else None; judged by C loops."""
        payloads = list(map(_PAYLOAD, forms))
        identifiers = list(map(_IDENTIFIER, forms))
        timestamps = list(map(_TIMESTAMP, forms))
        names = list(map(_EVENT_NAME, forms))
        if len(set(identifiers)) != len(forms) or not self._first.keys().isdisjoint(identifiers):
            return None
        keys_by_name = {name: self._keys.get(name) or self._keys_of(name) for name in set(names)}
        keys = set(keys_by_name.values())
        if None in keys:
            return None
        if len(keys) == 1:
            (shared,) = cast("set[MeterKeys]", keys)
            values = map(dict.get, payloads, repeat(shared.value_key))
            customers = map(dict.get, payloads, repeat(shared.customer_key), repeat(""))
        else:
            of_name = cast("dict[str, MeterKeys]", keys_by_name).__getitem__
            values = map(dict.get, payloads, map(_VALUE_KEY, map(of_name, names)))
            customers = map(dict.get, payloads, map(_CUSTOMER_KEY, map(of_name, names)), repeat(""))
        lengths = list(map(len, identifiers))
        judged_values, judged_times = self._values, self._timestamps
        if not (
            min(lengths) > 0
            and max(lengths) <= MAX_IDENTIFIER_LENGTH
            and all(map(str.strip, customers))
            and all(judged_values.get(v) or self._value_judged(v) for v in set(values))
            and all(judged_times.get(t) or self._timestamp_judged(t) for t in set(timestamps))
            and _all_sent_as_is(texts, payloads)
        ):
            return None
        return list(map(MeterEvent, names, payloads, identifiers, timestamps, texts))

    def _each_usual(
        self, forms: list[_StripeForm], texts: Sequence[str], message_ids: Sequence[str]
    ) -> Singles:
        """A run that may hold a record that is not usual: each record judged on its own, in
        Python, as `read_short` would (its decoding done)."""
        first, seen = self._first, set()
        events: list[MeterEvent | None] = []
        usual = True
        for form, text, message_id in zip(forms, texts, message_ids, strict=True):
            event = self._judged(form)
            identifier = form.identifier
            if (
                event is None
                or identifier in seen
                or identifier in first
                or not _sent_as_is(text, event)
            ):
                events.append(None)
                usual = False
            else:
                event.source = text
                events.append(event)
                first[identifier] = (event, message_id, 0)
            seen.add(identifier)
        return Singles(events, usual)

    def read_in_full(self, body: str, message_id: str, sent_at: datetime) -> ParsedMessage:
        """A body `read_short` did not take: each event normalised and valid, or rejected with
        a reason. A UTF-8 byte-order mark before the JSON is read past."""
        if body[:1] == "\ufeff":
            body = body[1:]
        document = decode_body(body)
        message = parse_document(body, document, message_id, sent_at, self)
        for index, parsed in enumerate(message.events):
            if parsed.event is not None:
                duplicate = self._duplicate(parsed.event, message_id, parsed.index)
                if duplicate is not None:
                    message.events[index] = ParsedEvent(
                        parsed.index, parsed.identifier, None, parsed.raw, duplicate, sent_at
                    )
        return message

    def event_names(self) -> Collection[str]:
        """The event names of every event judged valid by the short path so far (and of some
        judged invalid): the names of a batch with nothing read in full, without a pass over
        its events."""
        return self._keys.keys()

    def forget_identifiers(self) -> None:
        """The batch is read: no event is judged against the others any more."""
        self._first = {}

    def forget_meters(self) -> None:
        """The rules' meters changed: what was judged of event names is judged again."""
        self._keys.clear()

    def duplicate(self, event: MeterEvent, message_id: str, index: int) -> Rejection | None:
        return self._duplicate(event, message_id, index)

    def _duplicate(self, event: MeterEvent, message_id: str, index: int) -> Rejection | None:
        """Stripe counts the first event of an identifier and drops the others without a word:
        a later event of the batch with that identifier and other contents is refused here.
        The same event again is not (Stripe counts it once, which is what was meant)."""
        first = self._first.get(event.identifier)
        if first is None:
            self._first[event.identifier] = (event, message_id, index)
            return None
        earlier, where, at = first
        if (
            earlier.event_name == event.event_name
            and earlier.payload == event.payload
            and self.moment(earlier.timestamp) == self.moment(event.timestamp)
        ):
            return None
        return Rejection(
            ErrorCode.DUPLICATE_IDENTIFIER_IN_BATCH,
            f"identifier {event.identifier!r} is also that of event {at} of message {where}, "
            "with other contents, in the same batch: Stripe would count only the first",
            "identifier",
        )

    def normalise(self, raw: Any, index: int, message_id: str, sent_at: datetime) -> ParsedEvent:
        """One event of a message: its form normalised and Stripe's rules applied."""
        identifier = identifier_of(raw, index, message_id)
        try:
            event = _normalised(raw, identifier, sent_at, self)
        except EventRejected as rejected:
            return ParsedEvent(index, identifier, None, raw, rejected.rejection, sent_at)
        return ParsedEvent(index, identifier, event, raw)

    def value_ok(self, value: str) -> bool:
        allowed = self._values.get(value)
        if allowed is None:
            allowed = self._values[value] = value_allowed(value, self.rules.value_rule)
        return allowed

    def moment(self, text: str) -> datetime | None:
        if text in self._moments:
            return self._moments[text]
        moment = self._moments[text] = parse_rfc3339(text)
        return moment

    def window(self) -> tuple[datetime, datetime]:
        """Stripe's window around `now`: 35 days back, 5 minutes ahead."""
        return self._earliest, self._latest

    def stripe_form(self, raw: Any) -> MeterEvent | None:
        """The event, if it is already exactly Stripe's form and valid; judged in fewer steps
        than `normalise_event`. None for anything else (the full path then judges it, and
        says why)."""
        if type(raw) is not dict or len(raw) != len(EVENT_FIELDS):
            return None
        event_name = raw.get("event_name")
        identifier = raw.get("identifier")
        timestamp = raw.get("timestamp")
        payload = raw.get("payload")
        if (
            type(event_name) is not str
            or type(identifier) is not str
            or type(timestamp) is not str
            or type(payload) is not dict
        ):
            return None
        for value in payload.values():
            if type(value) is not str:
                return None
        return self._valid(event_name, payload, identifier, timestamp)

    def _judged(self, form: _StripeForm) -> MeterEvent | None:
        return self._valid(form.event_name, form.payload, form.identifier, form.timestamp)

    def _valid(
        self, event_name: str, payload: dict[str, str], identifier: str, timestamp: str
    ) -> MeterEvent | None:
        """Stripe's rules on an event whose fields have Stripe's types: the event, or None."""
        if not 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH:
            return None
        keys = self._keys.get(event_name) or self._keys_of(event_name)
        if keys is None:
            return None
        value = payload.get(keys.value_key)
        allowed = self._values.get(value)
        if allowed is None:
            allowed = self._value_judged(value)
        in_window = self._timestamps.get(timestamp)
        if in_window is None:
            in_window = self._timestamp_judged(timestamp)
        if not allowed or not in_window or not payload.get(keys.customer_key, "").strip():
            return None
        return MeterEvent(event_name, payload, identifier, timestamp)

    def _keys_of(self, event_name: str) -> MeterKeys | None:
        """An event name judged (and kept) the first time it is seen: its meter's payload keys,
        or None if Stripe would refuse it (blank, or its meter missing or archived)."""
        if not event_name.strip() or self.rules.meter_refusal(event_name) is not None:
            return None
        keys = self._keys[event_name] = self.rules.keys_for(event_name)
        return keys

    def _value_judged(self, value: str | None) -> bool:
        allowed = (
            isinstance(value, str) and value != "" and value_allowed(value, self.rules.value_rule)
        )
        self._values[value] = allowed
        return allowed

    def _timestamp_judged(self, timestamp: str) -> bool:
        moment = parse_rfc3339(timestamp)
        in_window = moment is not None and self._earliest <= moment <= self._latest
        self._timestamps[timestamp] = in_window
        return in_window


def normalise_event(
    raw: Any,
    index: int,
    message_id: str,
    sent_at: datetime,
    rules: ValidationRules,
    now: datetime,
) -> ParsedEvent:
    """Normalise one event's form and apply Stripe's rules to it (a Judge of its own)."""
    return Judge(rules, now).normalise(raw, index, message_id, sent_at)


def identifier_of(raw: Any, index: int, message_id: str) -> str | None:
    """The producer's identifier when usable; derived from the message id when absent (stable
    across redeliveries of the message); None when it is broken (Stripe would refuse it)."""
    if not isinstance(raw, dict) or raw.get("identifier") is None:
        return derive_identifier(message_id, index)
    given = raw["identifier"]
    if isinstance(given, str) and 0 < len(given) <= MAX_IDENTIFIER_LENGTH:
        return given
    return None


def _normalised(raw: Any, identifier: str | None, sent_at: datetime, judge: Judge) -> MeterEvent:
    if not isinstance(raw, dict):
        raise _reject(
            ErrorCode.PARAMETER_INVALID, f"an event is a JSON object, not {type(raw).__name__}"
        )
    if not raw.keys() <= EVENT_FIELDS:
        unknown = sorted(set(raw) - EVENT_FIELDS)
        raise _reject(ErrorCode.PARAMETER_UNKNOWN, f"unknown event fields {unknown}", unknown[0])
    event_name = raw.get("event_name")
    if event_name is None:
        raise _reject(ErrorCode.PARAMETER_MISSING, "event_name is required", "event_name")
    if not isinstance(event_name, str) or not event_name.strip():
        raise _reject(ErrorCode.PARAMETER_INVALID, "event_name is a non-empty string", "event_name")
    refusal = judge.rules.meter_refusal(event_name)
    if refusal is not None:
        raise EventRejected(refusal)
    if identifier is None:
        raise _reject(
            ErrorCode.PARAMETER_INVALID,
            f"identifier is a string of 1 to {MAX_IDENTIFIER_LENGTH} characters",
            "identifier",
        )
    payload = _payload(raw.get("payload"), judge.rules.keys_for(event_name), judge)
    timestamp = _timestamp(raw.get("timestamp"), sent_at, judge)
    return MeterEvent(event_name, payload, identifier, timestamp)


def _payload(raw: Any, keys: MeterKeys, judge: Judge) -> dict[str, str]:
    if raw is None:
        raise _reject(ErrorCode.PARAMETER_MISSING, "payload is required", "payload")
    if not isinstance(raw, dict):
        raise _reject(ErrorCode.PARAMETER_INVALID, "payload is an object of strings", "payload")
    payload: dict[str, str] = raw  # already Stripe's form (the common case): no copy
    for value in raw.values():
        if type(value) is not str:
            payload = {key: _payload_string(key, value) for key, value in raw.items()}
            break
    if not payload.get(keys.customer_key, "").strip():
        raise _reject(
            ErrorCode.PAYLOAD_NO_CUSTOMER_DEFINED,
            f"payload has no customer under {keys.customer_key!r}",
            f"payload.{keys.customer_key}",
        )
    value = payload.get(keys.value_key)
    if value is None or value == "":
        raise _reject(
            ErrorCode.PAYLOAD_NO_VALUE_DEFINED,
            f"payload has no value under {keys.value_key!r}",
            f"payload.{keys.value_key}",
        )
    if not judge.value_ok(value):
        wanted = (
            "a positive integer"
            if judge.rules.value_rule == "positive_integer"
            else ("a number >= 0")
        )
        raise _reject(
            ErrorCode.PAYLOAD_INVALID_VALUE,
            f"value {value[:40]!r} is not {wanted}",
            f"payload.{keys.value_key}",
        )
    return payload


def _payload_string(key: str, value: Any) -> str:
    """Stripe takes strings only: numbers become their plain decimal text, the rest is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject(
            ErrorCode.PARAMETER_INVALID,
            f"payload.{key} is a {type(value).__name__}; values are strings or numbers",
            f"payload.{key}",
        )
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise _reject(ErrorCode.PARAMETER_INVALID, f"payload.{key} is {value}", f"payload.{key}")
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def value_allowed(value: str, rule: ValueRule) -> bool:
    """Stripe documents a positive integer; the "decimal" rule admits any number >= 0 written
    as JSON writes numbers (digits, a fraction, an exponent; no sign, space or other digits)."""
    if rule == "positive_integer":
        # not int(value) > 0: int() refuses texts of more than 4300 digits (ValueError)
        return bool(_POSITIVE_INTEGER.match(value)) and value.strip("0") != ""
    return bool(_DECIMAL_TEXT.match(value))


def _timestamp(raw: Any, sent_at: datetime, judge: Judge) -> str:
    """RFC 3339 text inside Stripe's window. Absent: when the producer sent the message."""
    if raw is None:
        moment = sent_at
    elif isinstance(raw, str):
        parsed = judge.moment(raw)
        if parsed is None:
            raise _reject(
                ErrorCode.PARAMETER_INVALID,
                f"timestamp {raw[:40]!r} is not an RFC 3339 date-time",
                "timestamp",
            )
        moment = parsed
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            moment = datetime.fromtimestamp(raw, UTC)
        except (OverflowError, OSError, ValueError):
            raise _reject(
                ErrorCode.PARAMETER_INVALID, f"timestamp {raw} is not epoch seconds", "timestamp"
            ) from None
    else:
        raise _reject(
            ErrorCode.PARAMETER_INVALID,
            f"timestamp is RFC 3339 text or epoch seconds, not {type(raw).__name__}",
            "timestamp",
        )
    earliest, latest = judge.window()
    if moment < earliest:
        raise _reject(
            ErrorCode.TIMESTAMP_TOO_FAR_IN_PAST,
            f"timestamp {_shown(raw, moment)} is more than 35 days ago",
            "timestamp",
        )
    if moment > latest:
        raise _reject(
            ErrorCode.TIMESTAMP_IN_FUTURE,
            f"timestamp {_shown(raw, moment)} is more than 5 minutes ahead",
            "timestamp",
        )
    return raw if isinstance(raw, str) else format_timestamp(moment)


def _shown(raw: Any, moment: datetime) -> str:
    # as given: converting "0001-01-01T00:00:00+01:00" to UTC overflows (OverflowError)
    return raw[:40] if isinstance(raw, str) else format_timestamp(moment)
