"""Configuration from the environment: required variables, defaults, ranges, URLs, METER_KEYS."""

from __future__ import annotations

import pytest

from meter_relay.config import (
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
    DEFAULT_METER_EVENTS_BASE,
    ConfigError,
    ForwarderConfig,
    RefresherConfig,
    RetryPolicy,
    is_stripe_url,
    key_mode,
)
from meter_relay.events import MeterKeys

FORWARDER_ENV = {
    "STRIPE_MODE": "test",
    "SESSION_TOKEN_PARAMETER": "/meter-relay/session",
    "DEAD_LETTER_QUEUE_URL": "http://127.0.0.1:5000/123456789012/usage-dlq",
}
REFRESHER_ENV = {
    "STRIPE_MODE": "test",
    "STRIPE_SECRET_ID": "meter-relay/stripe-secret-key",
    "SESSION_TOKEN_PARAMETER": "/meter-relay/session",
}


def forwarder(**env: str) -> ForwarderConfig:
    return ForwarderConfig.from_env({**FORWARDER_ENV, **env})


def refresher(**env: str) -> RefresherConfig:
    return RefresherConfig.from_env({**REFRESHER_ENV, **env})


# ----- the forwarder ----------------------------------------------------------------------------


def test_the_forwarder_defaults() -> None:
    config = forwarder()
    assert (
        config.meter_events_base == DEFAULT_METER_EVENTS_BASE == "https://meter-events.stripe.com"
    )
    assert config.api_version == DEFAULT_API_VERSION
    assert config.session_parameter == "/meter-relay/session"
    assert config.dead_letter_queue_url == FORWARDER_ENV["DEAD_LETTER_QUEUE_URL"]
    assert config.refresher_function_name is None
    assert config.stream_concurrency == 64
    assert config.token_margin == 60
    assert config.retry == RetryPolicy(
        max_attempts=6, base_delay=0.2, max_delay=5.0, request_timeout=10.0, deadline_margin=3.0
    )
    assert config.rules.value_rule == "positive_integer"
    assert config.rules.keys_for("api_requests") == MeterKeys("stripe_customer_id", "value")


def test_empty_or_blank_tuning_variables_mean_their_defaults() -> None:
    blank = {
        "STRIPE_METER_EVENTS_BASE": "",
        "STRIPE_API_VERSION": "  ",
        "REFRESHER_FUNCTION_NAME": " ",
        "STREAM_CONCURRENCY": "",
        "MAX_ATTEMPTS": " ",
        "METER_KEYS": "",
        "VALUE_RULE": "",
    }
    assert forwarder(**blank) == forwarder()


def test_the_forwarder_reads_every_variable() -> None:
    config = forwarder(
        STRIPE_METER_EVENTS_BASE="http://127.0.0.1:12111/",
        STRIPE_API_VERSION="2025-07-30.preview",
        REFRESHER_FUNCTION_NAME=" meter-relay-refresher ",
        STREAM_CONCURRENCY="16",
        TOKEN_MARGIN_SECONDS="120",
        MAX_ATTEMPTS="6",
        RETRY_BASE_DELAY_MS="50",
        RETRY_MAX_DELAY_MS="2500",
        REQUEST_TIMEOUT_SECONDS="2.5",
        DEADLINE_MARGIN_MS="1500",
        METER_KEYS='{"search_calls": {"customer_key": "customer", "value_key": "calls"}}',
        VALUE_RULE="decimal",
    )
    assert config.meter_events_base == "http://127.0.0.1:12111"
    assert config.api_version == "2025-07-30.preview"
    assert config.refresher_function_name == "meter-relay-refresher"
    assert config.stream_concurrency == 16
    assert config.token_margin == 120
    assert config.retry == RetryPolicy(
        max_attempts=6, base_delay=0.05, max_delay=2.5, request_timeout=2.5, deadline_margin=1.5
    )
    assert config.rules.value_rule == "decimal"
    assert config.rules.keys_for("search_calls") == MeterKeys("customer", "calls")
    assert config.rules.keys_for("api_requests") == MeterKeys("stripe_customer_id", "value")


@pytest.mark.parametrize(
    "name", ["STRIPE_MODE", "SESSION_TOKEN_PARAMETER", "DEAD_LETTER_QUEUE_URL"]
)
@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_required_forwarder_variable_missing_is_named(name: str, value: str | None) -> None:
    env = dict(FORWARDER_ENV)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError, match=name):
        ForwarderConfig.from_env(env)


def test_an_empty_environment_fails_for_the_forwarder() -> None:
    with pytest.raises(ConfigError, match="is not set"):
        ForwarderConfig.from_env({})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAM_CONCURRENCY", "0"),
        ("STREAM_CONCURRENCY", "65"),
        ("STREAM_CONCURRENCY", "-1"),
        ("STREAM_CONCURRENCY", "eight"),
        ("TOKEN_MARGIN_SECONDS", "601"),
        ("TOKEN_MARGIN_SECONDS", "-1"),
        ("MAX_ATTEMPTS", "0"),
        ("MAX_ATTEMPTS", "21"),
        ("MAX_ATTEMPTS", "4 times"),
        ("RETRY_BASE_DELAY_MS", "60001"),
        ("RETRY_BASE_DELAY_MS", "-5"),
        ("RETRY_MAX_DELAY_MS", "1e9"),
        ("REQUEST_TIMEOUT_SECONDS", "0"),
        ("REQUEST_TIMEOUT_SECONDS", "0.05"),
        ("REQUEST_TIMEOUT_SECONDS", "121"),
        ("REQUEST_TIMEOUT_SECONDS", "10s"),
        ("DEADLINE_MARGIN_MS", "nan"),
        ("DEADLINE_MARGIN_MS", "inf"),
        ("DEADLINE_MARGIN_MS", "-inf"),
        ("TOKEN_MARGIN_SECONDS", "0x10"),
    ],
)
def test_a_forwarder_number_out_of_range_or_not_a_number_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        forwarder(**{name: value})


@pytest.mark.parametrize(
    ("name", "value", "attribute"),
    [
        ("STREAM_CONCURRENCY", "1", "stream_concurrency"),
        ("STREAM_CONCURRENCY", "64", "stream_concurrency"),
        ("TOKEN_MARGIN_SECONDS", "0", "token_margin"),
        ("TOKEN_MARGIN_SECONDS", "600", "token_margin"),
    ],
)
def test_the_ends_of_a_range_are_allowed(name: str, value: str, attribute: str) -> None:
    assert getattr(forwarder(**{name: value}), attribute) == float(value)


@pytest.mark.parametrize(
    "meter_keys",
    [
        "not json",
        "[]",
        '"search_calls"',
        '{"search_calls": "customer"}',
        '{"search_calls": {"customer": "c"}}',
        '{"search_calls": {"customer_key": "c", "value_key": "v", "unit": "ms"}}',
        '{"search_calls": {"customer_key": 5}}',
        '{"search_calls": {"value_key": ""}}',
        '{"search_calls": {"customer_key": null}}',
    ],
)
def test_malformed_meter_keys_are_refused(meter_keys: str) -> None:
    with pytest.raises(ConfigError, match="METER_KEYS"):
        forwarder(METER_KEYS=meter_keys)


@pytest.mark.parametrize("rule", ["integer", "Decimal", "positive-integer", "any"])
def test_an_unknown_value_rule_is_refused(rule: str) -> None:
    with pytest.raises(ConfigError, match="VALUE_RULE"):
        forwarder(VALUE_RULE=rule)


# ----- base URLs (both functions) ---------------------------------------------------------------


BAD_URLS = [
    "meter-events.stripe.com",
    "ftp://meter-events.stripe.com",
    "HTTPS//meter-events.stripe.com",
    "//meter-events.stripe.com",
    "https://",
    "http://",
    "http:///v2",
    "https://:443",
    "http://[::1",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_meter_events_base_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ConfigError, match="STRIPE_METER_EVENTS_BASE"):
        forwarder(STRIPE_METER_EVENTS_BASE=url)


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_api_base_must_be_an_http_url(url: str) -> None:
    with pytest.raises(ConfigError, match="STRIPE_API_BASE"):
        refresher(STRIPE_API_BASE=url)


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://api.stripe.com", "https://api.stripe.com"),
        ("https://api.stripe.com/", "https://api.stripe.com"),
        ("http://127.0.0.1:12111//", "http://127.0.0.1:12111"),
        ("  http://localhost:8080  ", "http://localhost:8080"),
        ("http://[::1]:12111", "http://[::1]:12111"),
    ],
)
def test_a_base_url_loses_its_trailing_slashes(url: str, kept: str) -> None:
    assert refresher(STRIPE_API_BASE=url).api_base == kept
    assert forwarder(STRIPE_METER_EVENTS_BASE=url).meter_events_base == kept


# ----- the stack's Stripe mode ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["test", "live"])
def test_both_functions_read_the_stripe_mode(mode: str) -> None:
    assert forwarder(STRIPE_MODE=mode).mode == mode
    assert refresher(STRIPE_MODE=mode).mode == mode


@pytest.mark.parametrize("mode", ["Live", "production", "sk_live", "true", "prod"])
def test_a_stripe_mode_other_than_test_or_live_is_refused(mode: str) -> None:
    with pytest.raises(ConfigError, match="STRIPE_MODE"):
        forwarder(STRIPE_MODE=mode)
    with pytest.raises(ConfigError, match="STRIPE_MODE"):
        refresher(STRIPE_MODE=mode)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:12111",
        "http://api.stripe.com",  # not over TLS
        "https://api.stripe.com.example.net",
        "https://stripe.com.evil.example",
        "https://notstripe.com",
    ],
)
def test_a_live_stack_refuses_a_base_that_is_not_stripes_own(url: str) -> None:
    """A live session token or key must never leave for an emulator or a look-alike host."""
    with pytest.raises(ConfigError, match="STRIPE_METER_EVENTS_BASE"):
        forwarder(STRIPE_MODE="live", STRIPE_METER_EVENTS_BASE=url)
    with pytest.raises(ConfigError, match="STRIPE_API_BASE"):
        refresher(STRIPE_MODE="live", STRIPE_API_BASE=url)
    assert forwarder(STRIPE_MODE="test", STRIPE_METER_EVENTS_BASE=url).mode == "test"


def test_a_live_stack_takes_stripes_hosts() -> None:
    assert forwarder(STRIPE_MODE="live").meter_events_base == "https://meter-events.stripe.com"
    assert refresher(STRIPE_MODE="live").api_base == "https://api.stripe.com"


@pytest.mark.parametrize(
    ("url", "stripe"),
    [
        ("https://api.stripe.com", True),
        ("https://meter-events.stripe.com/", True),
        ("https://API.STRIPE.COM", True),
        ("http://api.stripe.com", False),
        ("https://api.stripe.com.attacker.io", False),
        ("https://xstripe.com", False),
        ("https://[::1", False),
    ],
)
def test_is_stripe_url(url: str, stripe: bool) -> None:
    assert is_stripe_url(url) is stripe


@pytest.mark.parametrize(
    ("key", "mode"),
    [
        ("sk_live_abc", "live"),
        ("rk_live_abc", "live"),
        ("sk_test_abc", "test"),
        ("rk_test_abc", "test"),
        ("sk_abc", None),
        ("pk_live_abc", None),
    ],
)
def test_a_keys_mode_is_told_by_its_prefix(key: str, mode: str | None) -> None:
    assert key_mode(key) == mode


# ----- the refresher ----------------------------------------------------------------------------


def test_the_refresher_defaults() -> None:
    config = refresher()
    assert config == RefresherConfig(
        api_base=DEFAULT_API_BASE,
        api_version=DEFAULT_API_VERSION,
        secret_id="meter-relay/stripe-secret-key",
        session_parameter="/meter-relay/session",
        mode="test",
        refresh_margin=420.0,
        request_timeout=10.0,
    )
    assert config.api_base == "https://api.stripe.com"


def test_the_refresher_reads_every_variable() -> None:
    config = refresher(
        STRIPE_API_BASE="http://127.0.0.1:12111",
        STRIPE_API_VERSION="2026-06-24.dahlia",
        REFRESH_MARGIN_SECONDS="300",
        REQUEST_TIMEOUT_SECONDS="4",
    )
    assert (config.api_base, config.api_version) == ("http://127.0.0.1:12111", "2026-06-24.dahlia")
    assert (config.refresh_margin, config.request_timeout) == (300, 4)


@pytest.mark.parametrize("name", ["STRIPE_MODE", "STRIPE_SECRET_ID", "SESSION_TOKEN_PARAMETER"])
def test_a_required_refresher_variable_missing_is_named(name: str) -> None:
    env = {key: value for key, value in REFRESHER_ENV.items() if key != name}
    with pytest.raises(ConfigError, match=name):
        RefresherConfig.from_env(env)


def test_the_refresher_does_not_need_the_forwarders_variables() -> None:
    assert RefresherConfig.from_env(REFRESHER_ENV).secret_id == REFRESHER_ENV["STRIPE_SECRET_ID"]
    with pytest.raises(ConfigError, match="DEAD_LETTER_QUEUE_URL"):
        ForwarderConfig.from_env({"STRIPE_MODE": "live", "SESSION_TOKEN_PARAMETER": "/p"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REFRESH_MARGIN_SECONDS", "841"),  # a token lives 15 minutes
        ("REFRESH_MARGIN_SECONDS", "-1"),
        ("REFRESH_MARGIN_SECONDS", "seven minutes"),
        ("REQUEST_TIMEOUT_SECONDS", "0"),
        ("REQUEST_TIMEOUT_SECONDS", "nan"),
    ],
)
def test_a_refresher_number_out_of_range_or_not_a_number_is_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        refresher(**{name: value})


def test_a_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_from_env_without_a_mapping_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FORWARDER_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAM_CONCURRENCY", "3")
    monkeypatch.delenv("METER_KEYS", raising=False)
    monkeypatch.delenv("VALUE_RULE", raising=False)
    monkeypatch.delenv("STRIPE_METER_EVENTS_BASE", raising=False)
    assert ForwarderConfig.from_env().stream_concurrency == 3


def test_the_meter_catalog_path_is_optional_and_an_ssm_path() -> None:
    assert forwarder().catalog_path is None
    assert forwarder(METER_CATALOG_PATH="/stack/stripe/meter-catalog/").catalog_path == (
        "/stack/stripe/meter-catalog"
    )
    assert refresher(METER_CATALOG_PATH="/s/c").catalog_path == "/s/c"
    for bad in ("stack/catalog", "/a//b"):
        with pytest.raises(ConfigError, match="METER_CATALOG_PATH"):
            forwarder(METER_CATALOG_PATH=bad)
