"""Configuration from the environment (docs/design.md's contract), checked once at start-up.

A missing or malformed variable fails loudly with its name, never with a default that would
send usage somewhere unexpected. Tuning variables have safe defaults, documented in
docs/design.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from botocore.config import Config

from meter_relay.events import ValidationRules

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
DEFAULT_API_VERSION = "2026-09-30.preview"

# boto3's own retry modes: "adaptive" also slows the client down under SSM throttling.
AWS_CLIENT_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 5}, connect_timeout=5)


StripeMode = Literal["test", "live"]
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


def is_stripe_url(url: str) -> bool:
    """Stripe's own hosts over HTTPS: where live keys and live sessions may go, and nowhere else."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.scheme == "https" and (host == "stripe.com" or host.endswith(".stripe.com"))


def key_mode(key: str) -> StripeMode | None:
    """The mode a Stripe key works in, from its prefix (None: not a key we can tell)."""
    if key.startswith(LIVE_KEY_PREFIXES):
        return "live"
    if key.startswith(TEST_KEY_PREFIXES):
        return "test"
    return None


def stripe_mode(env: Mapping[str, str]) -> StripeMode:
    """STRIPE_MODE (the stack's StripeMode): which of Stripe's modes this stack bills in.

    Required: a stack that streams live usage with a test-mode session is answered 200 by
    Stripe and never billed, so the mode is stated, never guessed."""
    value = _required(env, "STRIPE_MODE")
    if value not in ("test", "live"):
        raise ConfigError(f"STRIPE_MODE={value!r} is 'test' or 'live'")
    return "live" if value == "live" else "test"


def _live_on_stripe(mode: StripeMode, name: str, url: str) -> str:
    """A live stack talks to Stripe itself: a live session token sent elsewhere is leaked."""
    if mode == "live" and not is_stripe_url(url):
        raise ConfigError(
            f"{name}={url!r} is not Stripe's (https://*.stripe.com) and STRIPE_MODE is live: "
            "a live stack sends its credentials to Stripe only"
        )
    return url


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


def _ssm_path(env: Mapping[str, str], name: str) -> str | None:
    """An SSM parameter path (/a/b), or None when the variable is unset or empty."""
    value = env.get(name, "").strip().rstrip("/")
    if not value:
        return None
    if not value.startswith("/") or "//" in value:
        raise ConfigError(f"{name}={value!r} is not an SSM path such as /stack/stripe/meters")
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

    max_attempts: int = 6  # 5xx, timeouts, answers not Stripe's (429s do not count)
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
    mode: StripeMode = "test"
    catalog_path: str | None = None  # the meter catalog's SSM path (None: no pre-flight)
    ledger_bucket: str | None = None  # the delivery ledger's bucket (None: no ledger)
    ledger_prefix: str = ""
    stream_concurrency: int = 64
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
        mode = stripe_mode(env)
        base = _base_url(env, "STRIPE_METER_EVENTS_BASE", DEFAULT_METER_EVENTS_BASE)
        return cls(
            meter_events_base=_live_on_stripe(mode, "STRIPE_METER_EVENTS_BASE", base),
            api_version=env.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            session_parameter=_required(env, "SESSION_TOKEN_PARAMETER"),
            dead_letter_queue_url=_required(env, "DEAD_LETTER_QUEUE_URL"),
            refresher_function_name=env.get("REFRESHER_FUNCTION_NAME", "").strip() or None,
            mode=mode,
            catalog_path=_ssm_path(env, "METER_CATALOG_PATH"),
            ledger_bucket=env.get("LEDGER_BUCKET", "").strip() or None,
            ledger_prefix=env.get("LEDGER_PREFIX", "").strip().strip("/"),
            stream_concurrency=int(_number(env, "STREAM_CONCURRENCY", 64, 1, 64)),
            token_margin=_number(env, "TOKEN_MARGIN_SECONDS", 60, 0, 600),
            retry=RetryPolicy(
                max_attempts=int(_number(env, "MAX_ATTEMPTS", 6, 1, 20)),
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
    mode: StripeMode = "test"
    catalog_path: str | None = None
    refresh_margin: float = 420.0
    request_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RefresherConfig:
        env = os.environ if env is None else env
        mode = stripe_mode(env)
        base = _base_url(env, "STRIPE_API_BASE", DEFAULT_API_BASE)
        return cls(
            api_base=_live_on_stripe(mode, "STRIPE_API_BASE", base),
            api_version=env.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            secret_id=_required(env, "STRIPE_SECRET_ID"),
            session_parameter=_required(env, "SESSION_TOKEN_PARAMETER"),
            mode=mode,
            catalog_path=_ssm_path(env, "METER_CATALOG_PATH"),
            refresh_margin=_number(env, "REFRESH_MARGIN_SECONDS", 420, 0, 840),
            request_timeout=_number(env, "REQUEST_TIMEOUT_SECONDS", 10, 0.1, 120),
        )


# ----- the operator tools: the meter-relay CLI and the DLQ functions ------------------------------


@dataclass(frozen=True)
class ToolsConfig:
    """What the operator tools work with, read and checked once, alike for the CLI and the DLQ
    functions: the environment (as the template sets it for the functions), and for the CLI
    its stack's outputs and flags over it. A setting a command does not use may be missing
    (`need` says so when one does); the Stripe mode, when known, is checked against the key."""

    dead_letter_queue_url: str | None
    usage_queue_url: str | None
    secret_id: str | None
    api_base: str
    api_version: str
    mode: StripeMode | None
    rules: ValidationRules = field(default_factory=ValidationRules)
    # the delivery ledger: its bucket, and the Athena workgroup and Glue database that query it
    ledger_bucket: str | None = None
    ledger_prefix: str = ""
    ledger_workgroup: str | None = None
    ledger_database: str | None = None
    # Stripe's error reports processed so far (ErrorReportsFunction's and `errors pull`'s)
    error_reports_table: str | None = None
    # the meter catalog the refresher stores: each meter's payload keys
    catalog_path: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, str | None] | None = None,
        *,
        mode_required: bool = False,
    ) -> ToolsConfig:
        """From `env` (os.environ), with `overrides` (variable name -> value, None or empty:
        not given) over it. `mode_required`: STRIPE_MODE must be set (the DLQ functions)."""
        merged = dict(os.environ if env is None else env)
        merged.update({name: value for name, value in (overrides or {}).items() if value})
        given = merged.get("STRIPE_MODE", "").strip()
        mode = stripe_mode(merged) if given or mode_required else None
        base = _base_url(merged, "STRIPE_API_BASE", DEFAULT_API_BASE)
        try:
            rules = ValidationRules.from_settings(
                merged.get("METER_KEYS", "{}"), merged.get("VALUE_RULE", "") or "positive_integer"
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return cls(
            dead_letter_queue_url=merged.get("DEAD_LETTER_QUEUE_URL", "").strip() or None,
            usage_queue_url=merged.get("USAGE_QUEUE_URL", "").strip() or None,
            secret_id=merged.get("STRIPE_SECRET_ID", "").strip() or None,
            api_base=base if mode is None else _live_on_stripe(mode, "STRIPE_API_BASE", base),
            api_version=merged.get("STRIPE_API_VERSION", "").strip() or DEFAULT_API_VERSION,
            mode=mode,
            rules=rules,
            ledger_bucket=merged.get("LEDGER_BUCKET", "").strip() or None,
            ledger_prefix=merged.get("LEDGER_PREFIX", "").strip().strip("/"),
            ledger_workgroup=merged.get("LEDGER_WORKGROUP", "").strip() or None,
            ledger_database=merged.get("LEDGER_DATABASE", "").strip() or None,
            error_reports_table=merged.get("ERROR_REPORTS_TABLE", "").strip() or None,
            catalog_path=_ssm_path(merged, "METER_CATALOG_PATH"),
        )

    def need(self, variable: str) -> str:
        """The value of a setting a command cannot do without, else a ConfigError naming it."""
        value = {
            "DEAD_LETTER_QUEUE_URL": self.dead_letter_queue_url,
            "USAGE_QUEUE_URL": self.usage_queue_url,
            "STRIPE_SECRET_ID": self.secret_id,
            "LEDGER_BUCKET": self.ledger_bucket,
            "ERROR_REPORTS_TABLE": self.error_reports_table,
        }[variable]
        if not value:
            raise ConfigError(f"{variable} is not set")
        return value
