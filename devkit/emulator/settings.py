"""The emulator's run-time settings: what POST /_emulator/config and the CLI may change.

Every value is checked here, once, whichever way it arrives; a configuration with one bad
value changes nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from devkit.emulator.masking import mask_secret

ValueRule = Literal["positive_integer", "decimal"]
DEFAULT_PARTNER_SOURCE = "aws.partner/stripe.com/ed_test_emulator"
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 (the kind of secret, not one)


@dataclass(frozen=True)
class WebhookEndpoint:
    """A webhook event destination: where thin events are POSTed, and the secret that signs them."""

    url: str
    secret: str

    @classmethod
    def parse(cls, raw: Any) -> WebhookEndpoint:
        if not isinstance(raw, Mapping) or set(raw) - {"url", "secret"}:
            raise ValueError('a webhook is {"url": "http(s)://...", "secret": "whsec_..."}')
        url, secret = raw.get("url"), raw.get("secret")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"webhook url must be an http(s) URL, got {url!r}")
        if not urlsplit(url).hostname:
            raise ValueError(f"webhook url must name a host, got {url!r}")
        if not isinstance(secret, str) or not secret.startswith(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"webhook secret must be a string starting {WEBHOOK_SECRET_PREFIX}")
        if len(secret) == len(WEBHOOK_SECRET_PREFIX):
            raise ValueError(f"webhook secret must have characters after {WEBHOOK_SECRET_PREFIX}")
        return cls(url, secret)

    def describe(self) -> dict[str, str]:
        return {"url": self.url, "secret": mask_secret(self.secret)}


@dataclass(frozen=True)
class EventBridgeDestination:
    """An Amazon EventBridge event destination: the bus Stripe's partner source puts events on."""

    event_bus_name: str = "default"
    source: str = DEFAULT_PARTNER_SOURCE
    region: str | None = None
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> EventBridgeDestination:
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, Mapping) or set(raw) - known:
            raise ValueError(f"eventbridge takes an object with the keys {sorted(known)}")
        for name, value in raw.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"eventbridge.{name} must be a non-empty string")
        return cls(**{name: value for name, value in raw.items() if value is not None})

    def describe(self) -> dict[str, str | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _number(low: float, *, above: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        try:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(number) or number < low or (above and number == low):
            raise ValueError(f"{name} must be {'above' if above else 'at least'} {low:g}")
        return number

    return check


def _count(low: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}")
        return value

    return check


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    return list(value)


def _value_rule(name: str, value: Any) -> ValueRule:
    if value == "positive_integer":
        return "positive_integer"
    if value == "decimal":
        return "decimal"
    raise ValueError(f"{name} must be 'positive_integer' or 'decimal'")


def _webhooks(name: str, value: Any) -> list[WebhookEndpoint]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of webhook endpoints")
    return [WebhookEndpoint.parse(raw) for raw in value]


def _eventbridge(name: str, value: Any) -> EventBridgeDestination | None:
    return None if value is None else EventBridgeDestination.parse(value)


def _customers(name: str, value: Any) -> frozenset[str]:
    return frozenset(_strings(name, value))


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "session_ttl": _number(0, above=True),
    "value_rule": _value_rule,
    "meter_events_hold_ms": _number(0),
    "accepted_keys": _strings,
    "known_customers": _customers,
    "error_window_s": _number(0, above=True),
    "error_samples_per_code": _count(1),
    "webhooks": _webhooks,
    "eventbridge": _eventbridge,
    "delivery_attempts": _count(1),
    "delivery_backoff_s": _number(0),
    "summaries_lag_s": _number(0),
}


@dataclass
class Settings:
    """What tests may change at run time through /_emulator/config."""

    session_ttl: float = 900.0
    value_rule: ValueRule = "positive_integer"
    meter_events_hold_ms: float = 0.0
    accepted_keys: list[str] = field(default_factory=list)
    # customers the account knows; empty: every customer is known (no customer_not_found)
    known_customers: frozenset[str] = frozenset()
    # asynchronous error reports: the validation window and the samples kept per error code
    error_window_s: float = 10.0
    error_samples_per_code: int = 3
    # event destinations for thin events, and how often a failed push is tried in all
    webhooks: list[WebhookEndpoint] = field(default_factory=list)
    eventbridge: EventBridgeDestination | None = None
    delivery_attempts: int = 4
    delivery_backoff_s: float = 0.25  # before the 2nd attempt, doubling after each
    # how long after its arrival an event shows in meter event summaries (Stripe aggregates
    # asynchronously: its summaries are eventually consistent); 0: at once
    summaries_lag_s: float = 0.0

    NAMES: ClassVar[frozenset[str]] = frozenset(_CHECKS)

    def key_is_valid(self, key: str) -> bool:
        if self.accepted_keys:
            return key in self.accepted_keys
        return key.startswith("sk_test_") and len(key) > len("sk_test_")

    def update(self, values: Mapping[str, Any]) -> None:
        """Check every value, then set them all (ValueError, and nothing set, if one is bad)."""
        unknown = set(values) - self.NAMES
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        checked = {name: _CHECKS[name](name, value) for name, value in values.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def restore(self, saved: Settings) -> None:
        """Take every value of saved (a copy() made earlier), keeping this object's identity."""
        for name in self.NAMES:
            setattr(self, name, copy.copy(getattr(saved, name)))

    def copy(self) -> Settings:
        saved = Settings()
        saved.restore(self)
        return saved

    def describe(self) -> dict[str, Any]:
        """The settings as GET /_emulator/config shows them, secrets masked."""
        return {
            "session_ttl": self.session_ttl,
            "value_rule": self.value_rule,
            "meter_events_hold_ms": self.meter_events_hold_ms,
            "accepted_keys": [mask_secret(k) for k in self.accepted_keys],
            "known_customers": sorted(self.known_customers),
            "error_window_s": self.error_window_s,
            "error_samples_per_code": self.error_samples_per_code,
            "webhooks": [w.describe() for w in self.webhooks],
            "eventbridge": self.eventbridge.describe() if self.eventbridge else None,
            "delivery_attempts": self.delivery_attempts,
            "delivery_backoff_s": self.delivery_backoff_s,
        }
