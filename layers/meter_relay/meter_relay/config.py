"""Configuration from the environment (DESIGN.md's contract), checked once at start-up.

A missing or malformed variable fails loudly with its name, never with a default that would
send usage somewhere unexpected. Tuning variables have safe defaults, documented in README.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from botocore.config import Config

from meter_relay.events import ValidationRules

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
DEFAULT_API_VERSION = "2026-09-30.preview"

# boto3's own retry modes: "adaptive" also slows the client down under SSM throttling.
AWS_CLIENT_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 5}, connect_timeout=5)


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw} is outside {low:g}..{high:g}")
    return value


def _base_url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    try:  # a host is needed too: "https://" alone would fail only later, at every call
        host = urlsplit(value).hostname
    except ValueError:  # e.g. "http://[::1"
        host = None
    if not value.startswith(("https://", "http://")) or not host:
        raise ConfigError(f"{name}={value!r} is not an http(s) URL")
    return value.rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    """How the forwarder retries a stream call within one invocation."""

    max_attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0
    request_timeout: float = 10.0
    deadline_margin: float = 3.0  # no stream call or session renewal within this of the deadline

    @property
    def dead_letter_margin(self) -> float:
        """Dead letters may use the deadline margin but this: the time to settle and answer."""
        return min(0.5, self.deadline_margin / 2)


@dataclass(frozen=True)
class ForwarderConfig:
    meter_events_base: str
    api_version: str
    session_parameter: str
    dead_letter_queue_url: str
    refresher_function_name: str | None
    stream_concurrency: int = 8
    token_margin: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rules: ValidationRules = field(default_factory=ValidationRules)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ForwarderConfig:
        env = os.environ if env is None else env
        try:
            rules = ValidationRules.from_settings(
                env.get("METER_KEYS", "{}"), env.get("VALUE_RULE", "") or "positive_integer"
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(
            meter_events_base=_base_url(env, "STRIPE_METER_EVENTS_BASE", DEFAULT_METER_EVENTS_BASE),
            api_version=env.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            session_parameter=_required(env, "SESSION_TOKEN_PARAMETER"),
            dead_letter_queue_url=_required(env, "DEAD_LETTER_QUEUE_URL"),
            refresher_function_name=env.get("REFRESHER_FUNCTION_NAME", "").strip() or None,
            stream_concurrency=int(_number(env, "STREAM_CONCURRENCY", 8, 1, 64)),
            token_margin=_number(env, "TOKEN_MARGIN_SECONDS", 60, 0, 600),
            retry=RetryPolicy(
                max_attempts=int(_number(env, "MAX_ATTEMPTS", 4, 1, 20)),
                base_delay=_number(env, "RETRY_BASE_DELAY_MS", 200, 0, 60_000) / 1000,
                max_delay=_number(env, "RETRY_MAX_DELAY_MS", 5000, 0, 60_000) / 1000,
                request_timeout=_number(env, "REQUEST_TIMEOUT_SECONDS", 10, 0.1, 120),
                deadline_margin=_number(env, "DEADLINE_MARGIN_MS", 3000, 0, 60_000) / 1000,
            ),
            rules=rules,
        )


@dataclass(frozen=True)
class RefresherConfig:
    api_base: str
    api_version: str
    secret_id: str
    session_parameter: str
    refresh_margin: float = 420.0
    request_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RefresherConfig:
        env = os.environ if env is None else env
        return cls(
            api_base=_base_url(env, "STRIPE_API_BASE", DEFAULT_API_BASE),
            api_version=env.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            secret_id=_required(env, "STRIPE_SECRET_ID"),
            session_parameter=_required(env, "SESSION_TOKEN_PARAMETER"),
            refresh_margin=_number(env, "REFRESH_MARGIN_SECONDS", 420, 0, 840),
            request_timeout=_number(env, "REQUEST_TIMEOUT_SECONDS", 10, 0.1, 120),
        )
