"""Stripe's error reports read and turned into letters (meter_relay.error_reports): the shapes
Stripe documents, read tolerantly; one letter per sample, with Stripe's code as given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from meter_relay.dead_letter import (
    ATTR_ERROR_CODE,
    ATTR_ERROR_MESSAGE,
    ATTR_EVENT_NAME,
    ATTR_FIRST_SEEN,
    ATTR_IDENTIFIER,
    ATTR_METER_ID,
    ATTR_REPORTED_BY,
    ATTR_SOURCE_MESSAGE_ID,
    ATTR_STRIPE_EVENT_ID,
    ATTR_VALIDATION_END,
    ATTR_VALIDATION_START,
)
from meter_relay.error_reports import (
    BODY_UNKNOWN,
    DUPLICATE,
    PROCESSED,
    UNKNOWN_CODE,
    ErrorReport,
    NoBodies,
    Notification,
    NotificationError,
    Outcome,
    SampleError,
    report_letter,
    report_letters,
)

SQS_MAX_ATTRIBUTES = 10

# Stripe's own example (docs: api/v2/core/events/object).
DOCS_EXAMPLE: dict[str, Any] = {
    "id": "evt_test_65RCjj4EqW1sabcjs2Z16RCMoNQdSQkOWvfL6L5uU2K40u",
    "object": "v2.core.event",
    "context": None,
    "created": "2024-09-26T17:46:22.134Z",
    "data": {
        "developer_message_summary": "There is 1 invalid event",
        "reason": {
            "error_count": 1,
            "error_types": [
                {
                    "code": "meter_event_no_customer_defined",
                    "error_count": 1,
                    "sample_errors": [
                        {
                            "error_message": "Customer mapping key stripe_customer_id not found "
                            "in payload.",
                            "request": {"identifier": "cb447754-6880-45c2-8f2f-ef19b6ce81e9"},
                        }
                    ],
                }
            ],
        },
        "validation_end": "2024-09-26T17:46:20.000Z",
        "validation_start": "2024-09-26T17:46:10.000Z",
    },
    "livemode": False,
    "reason": None,
    "related_object": {
        "id": "mtr_test_61RCjiqdTDC91zgip41IqPCzPnxqqSVc",
        "type": "billing.meter",
        "url": "/v1/billing/meters/mtr_test_61RCjiqdTDC91zgip41IqPCzPnxqqSVc",
    },
    "type": "v1.billing.meter.error_report_triggered",
}


def no_meter_event(related: Any, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "evt_test_nometer",
        "object": "v2.core.event",
        "type": "v1.billing.meter.no_meter_found",
        "related_object": related,
        "data": {
            "reason": {
                "error_count": 1,
                "error_types": [
                    {
                        "code": "no_meter",
                        "error_count": 1,
                        "sample_errors": [
                            {
                                "error_message": "No meter was found matching event_name x.",
                                "request": request,
                            }
                        ],
                    }
                ],
            },
            "validation_start": "2026-11-21T10:00:00.000Z",
            "validation_end": "2026-11-21T10:00:10.000Z",
        },
    }


class Ledger:
    """A body lookup as the delivery ledger is: identifier -> what was sent (and the windows
    it was asked about)."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[str] = []
        self.windows: list[tuple[datetime | None, datetime | None]] = []

    def bodies(
        self, identifiers: Sequence[str], start: datetime | None, end: datetime | None
    ) -> dict[str, str]:
        self.asked.extend(identifiers)
        self.windows.append((start, end))
        return {i: self.known[i] for i in identifiers if i in self.known}


def texts(letter_attributes: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in letter_attributes.items()}


# ----- notifications ------------------------------------------------------------------------------
def test_a_thin_notification_is_read_without_data() -> None:
    thin = {k: v for k, v in DOCS_EXAMPLE.items() if k != "data"}
    notification = Notification.from_body(json.dumps(thin, indent=2).encode())
    assert notification == Notification(
        DOCS_EXAMPLE["id"], "v1.billing.meter.error_report_triggered", "2024-09-26T17:46:22.134Z"
    )
    assert notification.is_error_report
    other = Notification.from_document({"id": "evt_1", "type": "v1.billing.meter.created"})
    assert not other.is_error_report


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"id": "evt_1"}',
        b'{"id": 7, "type": "v1.billing.meter.no_meter_found"}',
        b'{"object": "event", "id": "evt_1", "type": "v1.billing.meter.no_meter_found"}',
    ],
)
def test_what_is_not_a_v2_notification_is_refused(body: bytes) -> None:
    with pytest.raises(NotificationError):
        Notification.from_body(body)


# ----- reports ------------------------------------------------------------------------------------
def test_the_docs_example_is_read_whole() -> None:
    report = ErrorReport.from_event(DOCS_EXAMPLE)
    assert report.meter_id == "mtr_test_61RCjiqdTDC91zgip41IqPCzPnxqqSVc"
    assert (report.validation_start, report.validation_end) == (
        "2024-09-26T17:46:10.000Z",
        "2024-09-26T17:46:20.000Z",
    )
    assert report.error_count == 1
    assert report.counts == {"meter_event_no_customer_defined": 1}
    assert report.samples == (
        SampleError(
            "meter_event_no_customer_defined",
            "Customer mapping key stripe_customer_id not found in payload.",
            "cb447754-6880-45c2-8f2f-ef19b6ce81e9",
        ),
    )


@pytest.mark.parametrize("related", [{}, None])
def test_no_meter_found_has_no_meter_whether_related_object_is_empty_or_null(
    related: Any,
) -> None:
    report = ErrorReport.from_event(no_meter_event(related, {"identifier": "lost-1"}))
    assert report.meter_id is None
    assert [s.identifier for s in report.samples] == ["lost-1"]


@pytest.mark.parametrize(
    ("request_", "identifier"),
    [
        ({"identifier": "idf"}, "idf"),
        ({"id": "", "idempotency_key": "37c741d8"}, "37c741d8"),  # an older docs example
        ({"id": "req_1", "idempotency_key": "37c741d8"}, "37c741d8"),  # id: Stripe's request
        ({"id": "req-id"}, "req-id"),
        ({}, None),
        (None, None),
    ],
)
def test_the_identifier_falls_back_to_idempotency_key_then_id(
    request_: Any, identifier: str | None
) -> None:
    report = ErrorReport.from_event(no_meter_event({}, request_))
    assert report.samples[0].identifier == identifier


def test_unknown_codes_are_kept_as_they_are_and_counts_add_up_per_code() -> None:
    event = {
        "id": "evt_x",
        "type": "v1.billing.meter.error_report_triggered",
        "data": {
            "reason": {
                "error_count": 7,
                "error_types": [
                    {"code": "meter_event_brand_new_rule", "error_count": 4, "sample_errors": []},
                    {"code": "meter_event_invalid_value", "error_count": 2},
                    {"code": "meter_event_brand_new_rule", "error_count": 1},
                    {"error_count": 0, "sample_errors": [{"error_message": "?", "request": {}}]},
                    "not an object",
                ],
            }
        },
    }
    report = ErrorReport.from_event(event)
    assert report.counts == {
        "meter_event_brand_new_rule": 5,
        "meter_event_invalid_value": 2,
        UNKNOWN_CODE: 0,
    }
    assert [s.code for s in report.samples] == [UNKNOWN_CODE]


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"data": None},
        {"data": {"reason": "x"}},
        {"data": {"reason": {"error_types": {"code": "x"}, "error_count": "3"}}},
        {"data": {"reason": {"error_types": [{"code": 5, "sample_errors": "x"}]}}},
        {"related_object": "mtr_1", "data": {"validation_start": 5}},
    ],
)
def test_a_malformed_event_is_read_as_far_as_it_goes(event: dict[str, Any]) -> None:
    report = ErrorReport.from_event(event)
    assert report.error_count is None
    assert report.meter_id is None
    assert report.validation_start is None


# ----- letters ------------------------------------------------------------------------------------
def test_a_letter_whose_body_is_unknown_says_so_and_carries_stripes_words() -> None:
    report = ErrorReport.from_event(DOCS_EXAMPLE)
    (letter,) = report_letters(report, NoBodies())
    attributes = texts(letter.attributes())
    assert attributes == {
        ATTR_ERROR_CODE: "meter_event_no_customer_defined",
        ATTR_ERROR_MESSAGE: "Customer mapping key stripe_customer_id not found in payload.",
        ATTR_IDENTIFIER: "cb447754-6880-45c2-8f2f-ef19b6ce81e9",
        ATTR_FIRST_SEEN: "2024-09-26T17:46:10.000Z",
        ATTR_STRIPE_EVENT_ID: DOCS_EXAMPLE["id"],
        ATTR_METER_ID: "mtr_test_61RCjiqdTDC91zgip41IqPCzPnxqqSVc",
        ATTR_VALIDATION_START: "2024-09-26T17:46:10.000Z",
        ATTR_VALIDATION_END: "2024-09-26T17:46:20.000Z",
        ATTR_REPORTED_BY: "stripe, body unknown",
    }
    body = json.loads(letter.body)
    assert body["body"] is None
    assert body["note"] == BODY_UNKNOWN == "reported by Stripe, body unknown"
    assert body["identifier"] == "cb447754-6880-45c2-8f2f-ef19b6ce81e9"
    assert body["code"] == "meter_event_no_customer_defined"
    assert body["stripe_event"] == DOCS_EXAMPLE["id"]


def test_a_known_body_is_the_letters_body_with_its_identifier_and_event_name() -> None:
    report = ErrorReport.from_event(no_meter_event({}, {"identifier": "lost-1"}))
    sent = '{"event_name":"searches","payload":{"stripe_customer_id":"cus_1","value":"3"}}'
    ledger = Ledger({"lost-1": sent})
    (letter,) = report_letters(report, ledger)
    assert ledger.asked == ["lost-1"]
    # asked about the report's validation window, where Stripe received the event
    assert ledger.windows == [
        (datetime(2026, 11, 21, 10, 0, tzinfo=UTC), datetime(2026, 11, 21, 10, 0, 10, tzinfo=UTC))
    ]
    assert json.loads(letter.body) == {**json.loads(sent), "identifier": "lost-1"}
    attributes = texts(letter.attributes())
    assert attributes[ATTR_REPORTED_BY] == "stripe"
    assert attributes[ATTR_EVENT_NAME] == "searches"
    assert attributes[ATTR_ERROR_CODE] == "no_meter"
    assert ATTR_METER_ID not in attributes  # no_meter_found names no meter
    as_sent = '{"event_name":"searches","identifier":"lost-1","payload":{}}'
    (kept,) = report_letters(report, Ledger({"lost-1": as_sent}))
    assert kept.body == as_sent  # already carries it: sent exactly as it was


def test_every_sample_is_a_letter_and_a_sample_without_identifier_is_kept() -> None:
    event = no_meter_event({}, {})
    event["data"]["reason"]["error_types"][0]["sample_errors"].append(
        {"error_message": "second", "request": {"identifier": "lost-2"}}
    )
    letters = report_letters(ErrorReport.from_event(event), Ledger({}))
    assert [letter.identifier for letter in letters] == [None, "lost-2"]
    assert ATTR_IDENTIFIER not in letters[0].attributes()


def test_a_letter_never_has_more_attributes_than_sqs_takes() -> None:
    report = ErrorReport.from_event(DOCS_EXAMPLE)
    sample = report.samples[0]
    letter = report_letter(report, sample, '{"event_name": "e", "payload": {}}')
    assert letter.event_name == "e"
    assert len(letter.attributes()) <= SQS_MAX_ATTRIBUTES
    assert ATTR_SOURCE_MESSAGE_ID not in letter.attributes()  # no SQS message of ours


def test_an_outcome_survives_the_idempotency_record() -> None:
    outcome = Outcome(
        "evt_1",
        PROCESSED,
        type="v1.billing.meter.no_meter_found",
        error_count=3,
        counts={"no_meter": 2, "x": 1},
        letters=2,
    )
    stored = json.loads(json.dumps(outcome.to_json()))
    assert Outcome.from_json(stored) == outcome
    assert outcome.counts_match
    assert outcome.rejected == 3
    assert not Outcome("e", PROCESSED, error_count=4, counts={"a": 3}).counts_match
    assert Outcome("e", PROCESSED, error_count=None, counts={"a": 3}).rejected == 3
    assert Outcome("e", DUPLICATE).counts_match  # only a processed report is checked
