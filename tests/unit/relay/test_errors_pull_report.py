"""`meter-relay errors pull`'s report and exit status: a report whose counts per code do not
add up to its error_count, or samples the ledger could not record, are exit 1 (something
stayed or does not add up), as the CLI's exit codes say; a clean pull is 0."""

from __future__ import annotations

import argparse
import json

import pytest

from meter_relay.error_reports import PROCESSED, Outcome, PullSummary
from meter_relay.errors_cli import _report


def pulled(*outcomes: Outcome) -> PullSummary:
    return PullSummary(outcomes=list(outcomes))


def report(output: str, summary: PullSummary) -> int:
    return _report(argparse.Namespace(output=output), summary)


def test_a_clean_pull_is_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    clean = Outcome("evt_1", PROCESSED, error_count=3, counts={"no_meter": 3}, letters=3)
    assert report("table", pulled(clean)) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("output", ["table", "json"])
def test_counts_that_do_not_add_up_are_exit_1_and_named(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    short = Outcome("evt_short", PROCESSED, error_count=5, counts={"no_meter": 3}, letters=3)
    clean = Outcome("evt_ok", PROCESSED, error_count=1, counts={"no_meter": 1}, letters=1)
    assert report(output, pulled(short, clean)) == 1
    out, err = capsys.readouterr()
    assert err == "warning: evt_short: the counts per code do not add up to error_count\n"
    if output == "json":
        assert json.loads(out)["count_mismatches"] == ["evt_short"]


def test_samples_the_ledger_lacks_are_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    unrecorded = Outcome(
        "evt_2", PROCESSED, error_count=2, counts={"no_meter": 2}, letters=2, unrecorded=2
    )
    assert report("table", pulled(unrecorded)) == 1
    assert "2 reported events are not recorded in the delivery ledger" in capsys.readouterr().err
