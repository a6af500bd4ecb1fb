"""ToolsConfig: the one configuration of the operator tools (the CLI and the DLQ functions),
checked as the other functions' configurations are."""

from __future__ import annotations

import pytest

from meter_relay.config import DEFAULT_API_BASE, DEFAULT_API_VERSION, ConfigError, ToolsConfig
from meter_relay.events import MeterKeys

ENV = {
    "DEAD_LETTER_QUEUE_URL": "https://sqs.example/dlq",
    "USAGE_QUEUE_URL": "https://sqs.example/usage",
    "STRIPE_SECRET_ID": "stack/stripe-secret-key",
    "STRIPE_MODE": "test",
}


def test_from_the_environment_with_defaults() -> None:
    config = ToolsConfig.from_env(ENV)
    assert config.dead_letter_queue_url == "https://sqs.example/dlq"
    assert config.need("USAGE_QUEUE_URL") == "https://sqs.example/usage"
    assert (config.api_base, config.api_version) == (DEFAULT_API_BASE, DEFAULT_API_VERSION)
    assert config.mode == "test"
    assert config.rules.value_rule == "positive_integer"


def test_overrides_win_and_empty_ones_do_not_count() -> None:
    config = ToolsConfig.from_env(
        ENV,
        {
            "DEAD_LETTER_QUEUE_URL": "https://sqs.example/other",
            "USAGE_QUEUE_URL": None,
            "STRIPE_SECRET_ID": "",
            "METER_KEYS": '{"calls": {"customer_key": "c"}}',
            "VALUE_RULE": "decimal",
        },
    )
    assert config.dead_letter_queue_url == "https://sqs.example/other"
    assert (config.usage_queue_url, config.secret_id) == (
        ENV["USAGE_QUEUE_URL"],
        ENV["STRIPE_SECRET_ID"],
    )
    assert config.rules.keys_for("calls") == MeterKeys("c", "value")
    assert config.rules.value_rule == "decimal"


def test_a_setting_a_command_needs_is_named_when_missing() -> None:
    config = ToolsConfig.from_env({})
    assert config.mode is None  # the CLI without a stack: the key's mode is not checked
    with pytest.raises(ConfigError, match="DEAD_LETTER_QUEUE_URL is not set"):
        config.need("DEAD_LETTER_QUEUE_URL")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STRIPE_API_BASE": "api.stripe.com"}, "STRIPE_API_BASE='api.stripe.com' is not an http"),
        ({"STRIPE_API_BASE": "https://"}, "is not an http"),
        (
            {"STRIPE_MODE": "live", "STRIPE_API_BASE": "http://127.0.0.1:12111"},
            "is not Stripe's",
        ),
        ({"STRIPE_MODE": "prod"}, "STRIPE_MODE='prod' is 'test' or 'live'"),
        ({"METER_KEYS": "{"}, "METER_KEYS is not JSON"),
        ({"VALUE_RULE": "float"}, "VALUE_RULE must be positive_integer or decimal"),
    ],
)
def test_what_the_tools_took_raw_is_checked_now(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ToolsConfig.from_env(env)


def test_the_functions_need_a_mode() -> None:
    with pytest.raises(ConfigError, match="STRIPE_MODE is not set"):
        ToolsConfig.from_env({}, mode_required=True)
    live = ToolsConfig.from_env({"STRIPE_MODE": "live"}, mode_required=True)
    assert (live.mode, live.api_base) == ("live", DEFAULT_API_BASE)
