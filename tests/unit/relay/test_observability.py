"""Metrics with several values: all of them in the one EMF document, as add_metric puts them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from meter_relay.observability import MAX_VALUES_PER_METRIC, add_samples, metrics


@pytest.fixture(autouse=True)
def _clean_metrics() -> Iterator[None]:
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def _document(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    metrics.flush_metrics()
    (line,) = capsys.readouterr().out.splitlines()
    document: dict[str, object] = json.loads(line)
    return document


def test_samples_reach_the_document_in_order_with_their_unit_as_add_metric_puts_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    samples = [12.5, 3, 40.25] + [1.0] * (MAX_VALUES_PER_METRIC - 3)
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, samples)
    ours = _document(capsys)
    for sample in samples:
        metrics.add_metric("StreamCallLatency", MetricUnit.Milliseconds, sample)
    theirs = _document(capsys)
    assert ours["StreamCallLatency"] == [float(sample) for sample in samples]
    assert ours["StreamCallLatency"] == theirs["StreamCallLatency"]
    assert ours["_aws"]["CloudWatchMetrics"] == theirs["_aws"]["CloudWatchMetrics"]  # type: ignore[index]


def test_no_samples_add_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, [])
    assert "StreamCallLatency" not in metrics.metric_set


def test_no_more_samples_than_one_document_holds_are_kept(
    capsys: pytest.CaptureFixture[str],
) -> None:
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, [float(n) for n in range(150)])
    assert _document(capsys)["StreamCallLatency"] == [float(n) for n in range(99)]


def test_samples_join_the_values_a_metric_already_holds_up_to_99_in_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics.add_metric("StreamCallLatency", MetricUnit.Milliseconds, 1.0)
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, [2.0] * 150)
    assert _document(capsys)["StreamCallLatency"] == [1.0] + [2.0] * 98


def test_samples_that_make_the_hundredth_metric_all_reach_the_documents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Powertools flushes its set when it holds 100 metrics: the samples that follow the one
    that made the hundredth go into the next document, none lost."""
    for n in range(99):
        metrics.add_metric(f"Other{n}", MetricUnit.Count, 1)
    add_samples("StreamCallLatency", MetricUnit.Milliseconds, [1.0, 2.0, 3.0])
    metrics.flush_metrics()
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["StreamCallLatency"] == [1.0]
    assert second["StreamCallLatency"] == [2.0, 3.0]


def test_a_unit_cloudwatch_lacks_is_refused_as_add_metric_refuses_it() -> None:
    with pytest.raises(Exception, match="Invalid metric unit"):
        add_samples("StreamCallLatency", "Furlongs", [1.0])  # type: ignore[arg-type]
