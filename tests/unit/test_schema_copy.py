"""The message schema has one source, schema/message.schema.json (the path producers are given);
the package ships a copy of it, which must not drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import meter_relay
from tests.commands import ROOT
from tests.message_schema import SCHEMA_PATH, events_in

PACKAGE_COPY = Path(meter_relay.__file__).parent / "message.schema.json"


def test_the_package_copy_is_the_schema_byte_for_byte() -> None:
    source, copy = SCHEMA_PATH.relative_to(ROOT), PACKAGE_COPY.relative_to(ROOT)
    assert PACKAGE_COPY.read_bytes() == SCHEMA_PATH.read_bytes(), (
        f"{copy} differs from {source}: edit {source}, then `cp {source} {copy}`"
    )


def test_what_producers_send_is_judged_by_the_published_schema() -> None:
    """events_in, which the producer and example tests lean on, refuses what the contract does."""
    event = {"event_name": "api_requests", "payload": {"stripe_customer_id": "cus_1", "value": 3}}
    assert events_in(json.dumps(event)) == [event]
    assert events_in(json.dumps({"events": [event, event]})) == [event, event]
    refused_documents: list[dict[str, Any]] = [
        {"event_name": " ", "payload": {}},
        {"events": []},
        {"event_name": "e", "payload": {"value": True}},
        {"event_name": "e", "payload": {}, "timestamp": "2026-06-01 12:00:00"},
        {"Type": "Notification", "Message": json.dumps(event)},  # SNS without raw delivery
    ]
    for refused in refused_documents:
        with pytest.raises(AssertionError, match=r"refused by message\.schema\.json"):
            events_in(json.dumps(refused))
