"""Which DLQ messages and events an operation takes (Filters), and corrections (Fix).

A message can hold many events of many customers (an envelope SQS moved whole): `--customer`
and `--event-name` choose events, and a message when any of its events is chosen. Operations
that act on events one by one (cancel, discard) act on exactly the chosen events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from meter_relay.dlq.reading import DlqEvent, DlqMessage
from meter_relay.events import ValidationRules, parse_rfc3339

FILTER_KEYS = ("code", "event_name", "customer", "since", "until", "max")


class Reasons(StrEnum):
    """Which reasons a selection takes before its filters apply."""

    ANY = "any"
    PASSING = "passing"  # redrive's default: what sending again would deliver as it is


@dataclass
class Filters:
    """Which DLQ messages (and which of their events) an operation takes. Empty sets match
    everything; every filter given must hold."""

    codes: set[str] = field(default_factory=set)
    event_names: set[str] = field(default_factory=set)
    customers: set[str] = field(default_factory=set)
    since: datetime | None = None
    until: datetime | None = None
    max_count: int | None = None
    reasons: Reasons = Reasons.ANY

    @property
    def chooses_events(self) -> bool:
        """Whether the filters choose among a message's events (not all of them)."""
        return bool(self.event_names or self.customers)

    @property
    def given(self) -> bool:
        """Whether any filter narrows the selection (--max alone does not)."""
        return bool(self.codes or self.chooses_events or self.since or self.until)

    def matches(self, message: DlqMessage) -> bool:
        """The message is chosen: its own filters hold and, when the filters choose events,
        at least one of its events is chosen."""
        if self.reasons is Reasons.PASSING and not message.passing:
            return False
        if self.codes and message.code not in self.codes:
            return False
        if self.since and message.first_seen < self.since:
            return False
        if self.until and message.first_seen > self.until:
            return False
        return not self.chooses_events or any(self.matches_event(e) for e in message.events)

    def matches_event(self, event: DlqEvent) -> bool:
        """One event of a chosen message is chosen too (every event filter holds for it)."""
        if self.event_names and event.event_name not in self.event_names:
            return False
        return not self.customers or event.customer in self.customers

    def chosen_events(self, message: DlqMessage) -> list[DlqEvent]:
        return [e for e in message.events if self.matches_event(e)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (from_dict's), without the reasons (each operation has its own)."""
        data: dict[str, Any] = {}
        for key, values in (
            ("code", self.codes),
            ("event_name", self.event_names),
            ("customer", self.customers),
        ):
            if values:
                data[key] = sorted(values)
        for key, moment in (("since", self.since), ("until", self.until)):
            if moment is not None:
                data[key] = moment.isoformat()
        if self.max_count is not None:
            data["max"] = self.max_count
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filters:
        """The JSON form the Lambda entry points take (same names as the CLI flags)."""
        if not isinstance(data, dict):
            raise ValueError("filters is a JSON object")

        def names(key: str) -> set[str]:
            value = data.get(key)
            if value is None:
                return set()
            values = [value] if isinstance(value, str) else value
            if (
                not isinstance(values, list)
                or not values
                or not all(isinstance(v, str) and v for v in values)
            ):
                # an empty text or list (an unset variable) would choose everything
                raise ValueError(f"{key} is a text or a list of texts, none empty, not {value!r}")
            return set(values)

        def moment(key: str) -> datetime | None:
            text = data.get(key)
            if text is None:
                return None
            parsed = parse_rfc3339(str(text))
            if parsed is None:
                raise ValueError(f"{key} must be an RFC 3339 date-time, not {text!r}")
            return parsed

        unknown = set(data) - set(FILTER_KEYS)
        if unknown:
            raise ValueError(f"unknown filters: {sorted(unknown)}; known: {list(FILTER_KEYS)}")
        max_count = data.get("max")
        return cls(
            names("code"),
            names("event_name"),
            names("customer"),
            moment("since"),
            moment("until"),
            None if max_count is None else positive_count(max_count, "max"),
        )


def positive_count(value: Any, name: str) -> int:
    """A whole number above 0 (an int, or its text), else a ValueError that names it."""
    if not isinstance(value, bool) and isinstance(value, int | str):
        try:
            number = int(value)
        except ValueError:
            pass
        else:
            if number > 0:
                return number
    raise ValueError(f"{name} is a whole number above 0, not {value!r}")


@dataclass
class Fix:
    """Corrections applied before a replay: event names renamed, payload keys renamed, and
    customers remapped under the meter's customer key (after the renames)."""

    event_names: dict[str, str] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)
    payload_keys: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fix:
        if not isinstance(data, dict):
            raise ValueError("fix is a JSON object")
        unknown = set(data) - {"event_names", "customers", "payload_keys"}
        if unknown:
            raise ValueError(f"unknown fix sections: {sorted(unknown)}")
        sections = {}
        for name in ("event_names", "customers", "payload_keys"):
            mapping = data.get(name, {})
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in mapping.items()
            ):
                raise ValueError(f"{name} must map strings to non-empty strings")
            sections[name] = dict(mapping)
        return cls(**sections)

    @classmethod
    def from_file(cls, path: str | Path) -> Fix:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the fix file {path}: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"the fix file {path} must hold a JSON object")
        return cls.from_dict(data)

    def apply(self, raw: Any, rules: ValidationRules) -> Any:
        """The corrected event (a new dict); the identifier is never touched."""
        if not isinstance(raw, dict):
            return raw
        event = dict(raw)
        name = event.get("event_name")
        if isinstance(name, str) and name in self.event_names:
            event["event_name"] = self.event_names[name]
        payload = event.get("payload")
        if isinstance(payload, dict):
            payload = {self.payload_keys.get(k, k): v for k, v in payload.items()}
            key = rules.keys_for(str(event.get("event_name", ""))).customer_key
            customer = payload.get(key)
            if isinstance(customer, str) and customer in self.customers:
                payload[key] = self.customers[customer]
            event["payload"] = payload
        return event

    @property
    def empty(self) -> bool:
        return not (self.event_names or self.customers or self.payload_keys)
