"""`meter-relay errors pull`, in-process against moto and the emulator: Stripe's error reports
read from its list and dead-lettered as the function does, nothing twice (whether the function
or an earlier pull processed them); settings from the environment, the flags or --stack-name;
one-line errors with the CLI's exit codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.dlq_helpers import run, run_json
from tests.integration.error_report_helpers import (
    REJECTED,
    REJECTED_CODES,
    TABLE,
    Reports,
    answer,
    codes_and_identifiers,
    function_url_request,
    usage,
)
from tests.integration.error_report_helpers import reports as reports  # the fixture
from tests.integration.test_dlq_operator import create_stack, one_line
from tests.plugins.relay import API_VERSION

pytestmark = pytest.mark.integration

SINCE = ["--since", (datetime.now(UTC) - timedelta(hours=1)).isoformat()]


@pytest.fixture
def operator(reports: Reports, monkeypatch: pytest.MonkeyPatch) -> Reports:
    """The environment an operator sets without a stack."""
    relay = reports.relay
    for name, value in relay.aws.env.items():  # AWS_ENDPOINT_URL at moto, dummy credentials
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", relay.dlq_url)
    monkeypatch.setenv("STRIPE_SECRET_ID", relay.secret_id)
    monkeypatch.setenv("STRIPE_API_BASE", relay.emulator_url)
    monkeypatch.setenv("STRIPE_API_VERSION", API_VERSION)
    monkeypatch.setenv("ERROR_REPORTS_TABLE", TABLE)
    return reports


def test_pull_dead_letters_every_report_once_and_again_nothing(
    operator: Reports, capsys: pytest.CaptureFixture[str]
) -> None:
    created = operator.reject(*REJECTED)

    code, first = run_json(capsys, "errors", "pull", *SINCE)
    again, out, err = run(capsys, "errors", "pull", *SINCE)

    assert code == 0
    assert (first["events"], first["processed"], first["duplicates"]) == (2, 2, 0)
    assert first["letters"] == 3
    assert first["rejected"] == sum(e["data"]["reason"]["error_count"] for e in created)
    assert first["rejected_by_code"] == {"meter_event_invalid_value": 2, "no_meter": 1}
    assert first["count_mismatches"] == []
    assert again == 0
    assert "processed before (nothing written)         2" in out
    assert "0 letters written" in out
    assert err == ""
    letters = operator.letters()
    assert len(letters) == 3  # once each, after both pulls
    assert codes_and_identifiers(letters) == REJECTED_CODES


def test_pull_writes_nothing_the_function_wrote(
    operator: Reports, capsys: pytest.CaptureFixture[str]
) -> None:
    (received,) = operator.pushed(usage("pushed", value="0"))
    with operator.function() as function:
        assert answer(function.invoke(function_url_request(received)))[0] == 200
    operator.emulator.set_webhooks()
    operator.reject(usage("missed", name="nobody_meters_this"))

    code, pulled = run_json(capsys, "errors", "pull", *SINCE)

    assert code == 0
    assert (pulled["processed"], pulled["duplicates"]) == (1, 1)
    assert codes_and_identifiers(operator.letters()) == {
        "pushed": "meter_event_invalid_value",
        "missed": "no_meter",
    }


def test_until_bounds_the_pull(operator: Reports, capsys: pytest.CaptureFixture[str]) -> None:
    operator.reject(usage("old-one", value="0"))
    before = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()

    code, pulled = run_json(capsys, "errors", "pull", *SINCE, "--until", before)

    assert (code, pulled["events"]) == (0, 0)
    assert operator.letters() == []


def test_stack_name_finds_the_table_the_queue_and_the_secret(
    reports: Reports, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = reports.relay
    for name, value in relay.aws.env.items():
        monkeypatch.setenv(name, value)
    create_stack(relay, "billing", ErrorReportsTableName=TABLE)
    create_stack(relay, "older")  # deployed before error reports: no table output
    reports.reject(usage("by-stack", value="0"))

    code, pulled = run_json(capsys, "--stack-name", "billing", "errors", "pull", *SINCE)
    older, _, err = run(capsys, "errors", "pull", *SINCE, "--stack-name", "older")

    assert (code, pulled["processed"]) == (0, 1)
    assert codes_and_identifiers(reports.letters()) == {"by-stack": "meter_event_invalid_value"}
    assert older == 2
    assert "has no output ErrorReportsTableName" in one_line(err)


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--since", "yesterday"], 2, "--since takes an RFC 3339 date-time"),
        ([*SINCE, "--until", "soon"], 2, "--until takes an RFC 3339 date-time"),
        ([*SINCE, "--table-name", "no-such-table"], 2, "the table no-such-table does not exist"),
        ([*SINCE, "--dlq-url", ""], 0, None),  # an empty flag leaves the variable's value
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    operator: Reports,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    status: int,
    message: str | None,
) -> None:
    operator.reject(usage("kept", value="0"))
    code, _, err = run(capsys, "errors", "pull", *argv)
    assert code == status
    if message is None:
        assert err == ""
    else:
        assert message in one_line(err)
        assert operator.letters() == []


def test_without_a_table_it_says_how_to_name_one(
    operator: Reports, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ERROR_REPORTS_TABLE")
    code, _, err = run(capsys, "errors", "pull", *SINCE)
    assert code == 2
    assert "give --stack-name, or --table-name (or ERROR_REPORTS_TABLE)" in one_line(err)


def test_stripe_unreachable_is_exit_3_and_a_second_pull_finishes_the_work(
    operator: Reports, capsys: pytest.CaptureFixture[str]
) -> None:
    operator.reject(*REJECTED)
    operator.emulator.set_faults("events", error_rate=1.0, error_statuses=[503])

    code, _, err = run(capsys, "errors", "pull", *SINCE)
    assert code == 3
    assert "Stripe: HTTP 503" in one_line(err)
    assert operator.letters() == []

    operator.emulator.configure(clear_faults=True)
    code, pulled = run_json(capsys, "errors", "pull", *SINCE)
    assert (code, pulled["processed"]) == (0, 2)
    assert codes_and_identifiers(operator.letters()) == REJECTED_CODES


def test_dlq_list_counts_stripes_letters_by_its_codes(
    operator: Reports, capsys: pytest.CaptureFixture[str]
) -> None:
    operator.reject(*REJECTED)
    assert run_json(capsys, "errors", "pull", *SINCE)[0] == 0

    code, listed = run_json(capsys, "dlq", "list")

    assert code == 0
    assert listed["by_code"] == {"meter_event_invalid_value": 2, "no_meter": 1}
    assert listed["messages"] == 3
