"""The message contract's JSON Schema at its published path (schema/message.schema.json), for
tests that check what producers, in any language, put on the queue."""

from __future__ import annotations

import functools
import json
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

from tests.commands import ROOT

SCHEMA_PATH = ROOT / "schema" / "message.schema.json"


@functools.cache
def validator() -> Any:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def events_in(body: str) -> list[dict[str, Any]]:
    """The events a message body carries; AssertionError, saying why, if the schema refuses it."""
    document = json.loads(body)
    error = best_match(validator().iter_errors(document))
    assert error is None, f"refused by {SCHEMA_PATH.name} at {list(error.path)}: {error.message}"
    events: list[dict[str, Any]] = document.get("events", [document])
    return events
