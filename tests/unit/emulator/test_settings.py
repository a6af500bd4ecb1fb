"""Run-time settings: each value checked, a bad configuration changes nothing, secrets masked
when shown."""

from __future__ import annotations

from typing import Any

import pytest

from devkit.emulator.settings import (
    DEFAULT_PARTNER_SOURCE,
    EventBridgeDestination,
    Settings,
    WebhookEndpoint,
)

HOOK = {"url": "http://127.0.0.1:9/hook", "secret": "whsec_0123456789abcdef"}


def test_a_configuration_with_one_bad_value_changes_nothing() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="delivery_attempts"):
        settings.update({"error_window_s": 60, "webhooks": [HOOK], "delivery_attempts": 0})
    assert settings == Settings()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"error_window_s": 0}, "error_window_s must be above 0"),
        ({"error_window_s": "nan"}, "error_window_s must be above 0"),
        ({"error_window_s": "soon"}, "error_window_s must be a number"),
        ({"error_samples_per_code": 0}, "error_samples_per_code must be an integer"),
        ({"error_samples_per_code": 2.5}, "error_samples_per_code must be an integer"),
        ({"delivery_backoff_s": -1}, "delivery_backoff_s must be at least 0"),
        ({"known_customers": "cus_1"}, "known_customers must be a list"),
        ({"known_customers": [""]}, "known_customers must be a list"),
        ({"value_rule": "float"}, "value_rule must be"),
        ({"webhooks": HOOK}, "webhooks must be a list"),
        ({"webhooks": [{**HOOK, "url": "ftp://x/y"}]}, "must be an http"),
        ({"webhooks": [{**HOOK, "url": "http:///path"}]}, "must name a host"),
        ({"webhooks": [{**HOOK, "secret": "sk_test_123"}]}, "starting whsec_"),
        ({"webhooks": [{**HOOK, "secret": "whsec_"}]}, "characters after whsec_"),
        ({"webhooks": [{**HOOK, "events": ["*"]}]}, "a webhook is"),
        ({"eventbridge": {"bus": "x"}}, "eventbridge takes"),
        ({"eventbridge": {"event_bus_name": ""}}, "eventbridge.event_bus_name"),
        ({"colour": "red"}, "unknown settings"),
    ],
)
def test_bad_values_are_refused_with_their_name(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings().update(values)


def test_good_values_are_parsed_into_their_types() -> None:
    settings = Settings()
    settings.update(
        {
            "error_window_s": "30",
            "known_customers": ["cus_1", "cus_2"],
            "webhooks": [HOOK],
            "eventbridge": {"event_bus_name": "stripe", "region": "eu-west-1"},
        }
    )
    assert settings.error_window_s == 30.0
    assert settings.known_customers == frozenset({"cus_1", "cus_2"})
    assert settings.webhooks == [WebhookEndpoint(HOOK["url"], HOOK["secret"])]
    assert settings.eventbridge == EventBridgeDestination(
        "stripe", DEFAULT_PARTNER_SOURCE, "eu-west-1"
    )


def test_describe_masks_the_webhook_secret_and_keys() -> None:
    settings = Settings(accepted_keys=["sk_test_abcdefghijkl1234"])
    settings.update({"webhooks": [HOOK]})
    shown = settings.describe()
    assert shown["webhooks"] == [{"url": HOOK["url"], "secret": "whsec_****cdef"}]
    assert shown["accepted_keys"] == ["sk_test_****1234"]
    assert "0123456789abcdef" not in repr(shown)


def test_restore_takes_saved_values_into_the_same_object() -> None:
    settings = Settings()
    saved = settings.copy()
    settings.update({"webhooks": [HOOK], "known_customers": ["cus_1"], "session_ttl": 5})
    settings.accepted_keys.append("sk_test_x")
    settings.restore(saved)
    assert settings == Settings()
