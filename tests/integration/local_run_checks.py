"""What `make run` and `make chaos` must show of Stripe's error reports, from a run's JSON."""

from __future__ import annotations

from collections import Counter
from typing import Any


def assert_stripe_rejections_accounted(summary: dict[str, Any], route: str) -> dict[str, Any]:
    """Stripe rejected some events later; its reports reached ErrorReportsFunction by `route`;
    each rejected event is in the DLQ by its sample's letter or counted without a sample, and
    letters + unsampled make Stripe's totals, which are what Stripe rejected and what the
    function counted. Returns the report's stripe_error_reports."""
    assert summary["rejected_later"] > 0
    assert summary["rejected_later_dead_lettered"] > 0
    assert (
        summary["rejected_later_dead_lettered"] + summary["rejected_later_without_sample"]
        == summary["rejected_later"]
    )
    reports: dict[str, Any] = summary["stripe_error_reports"]
    assert reports["route"] == route
    assert reports["ok"] is True
    assert reports["reports"] == reports["processed_by_function"] >= 1
    assert reports["missing_letters"] == 0
    totals = Counter(reports["stripe_totals"])
    assert Counter(reports["letters"]) + Counter(reports["without_sample"]) == totals
    assert totals == Counter(reports["function_counted"]) == Counter(reports["stripe_rejected"])
    assert totals.total() >= summary["rejected_later"]  # an event sent twice is rejected twice
    # every reported event's body, from the ledger (else: when Stripe received and the ledger
    # recorded each unknown one)
    assert reports["bodies_unknown"] == 0, summary["unknown_bodies"]
    return reports


def assert_reconciled(summary: dict[str, Any]) -> None:
    """The run ends with a reconcile of its delivery ledger against Stripe's summaries, per
    meter, customer and hour: there was usage to compare, and no mismatch."""
    reconciled = summary["reconcile"]
    assert reconciled["mismatches"] == 0, reconciled
    assert [m["event_name"] for m in reconciled["meters"]] == ["api_requests", "search_calls"]
    assert all(m["compared"] > 0 for m in reconciled["meters"])
    assert reconciled["objects_read"] > 0
