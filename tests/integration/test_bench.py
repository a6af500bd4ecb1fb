"""`make bench` runs end to end, small: every path delivers and the results carry every figure.
No figure is judged here (speed is measured by `make bench`, never asserted in a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from devkit.bench import template_default
from devkit.cpu_share import vcpus_for

pytestmark = pytest.mark.integration

REQUIRED = {
    "forwarder_events_per_s",
    "baseline_events_per_s",
    "sdk_example_events_per_s",
    "sdk_batched_events_per_s",
    "forwarder_envelope_events_per_s",
    "floor_unread_events_per_s",
    "floor_decoded_events_per_s",
    "forwarder_peak_rss_mb",
    "handler_import_ms",
    "first_invocation_ms",
    "forwarder_to_baseline",
}


@pytest.mark.timeout(300)
def test_a_small_bench_runs_every_path_and_writes_its_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    completed = subprocess.run(  # noqa: S603 (our interpreter, our module)
        [
            sys.executable,
            "-m",
            "devkit.bench",
            "--events",
            "300",
            "--rounds",
            "1",
            "--ledger-rounds",
            "3",
            "--ledger-batch-sizes",
            "100,200",
            "--sdk-seconds",
            "0.3",
            "--output",
            str(output),
            "--chart",
            str(tmp_path / "bench.svg"),
            "--latency-ms",
            "5",
            "--concurrencies",
            "2,4",
            "--memory-sizes",
            "885,1769",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert completed.stdout.strip().splitlines()[-1].startswith("forwarder/baseline = ")
    results = json.loads(output.read_text())
    assert set(results) >= REQUIRED
    assert all(results[key] > 0 for key in REQUIRED)
    assert results["events_per_batch"] == 300
    assert results["ledger_paired_rounds"] == 3
    low, high = results["ledger_cpu_share_middle_half"]
    assert low <= results["ledger_cpu_share"] <= high
    first, last = results["ledger_cpu_share_confidence_95"]
    assert first <= results["ledger_cpu_share"] <= last
    assert any("95% confidence" in line for line in completed.stdout.splitlines())
    # the ledger's cost in smaller batches too, where its one PUT an invocation weighs more
    by_size = results["ledger_cpu_share_by_batch_size"]
    assert [cost["events_per_batch"] for cost in by_size] == [100, 200]
    for cost in by_size:
        first, last = cost["confidence_95"]
        assert first <= cost["median"] <= last
        assert any(
            f"in batches of {cost['events_per_batch']} records" in line
            for line in completed.stdout.splitlines()
        )
    # and for envelopes, whose forwarder takes less per event
    envelopes = results["ledger_cpu_share_envelopes"]
    first, last = envelopes["confidence_95"]
    assert first <= envelopes["median"] <= last
    assert any(
        "in envelopes of 100, 300 events a batch" in line for line in completed.stdout.splitlines()
    )
    lines = completed.stdout.strip().splitlines()
    assert lines[-3].startswith("forwarder/decoded floor = ")
    assert lines[-2].startswith("envelopes/baseline = ")
    rows = results["at_stripe_latency"]["rows"]
    assert [(row["memory_mb"], row["stream_concurrency"]) for row in rows] == [
        (885, 2),
        (885, 4),
        (1769, 2),
        (1769, 4),
    ]
    # each size at Lambda's CPU for it, where this machine lets the bench hold itself to it
    held = {row["memory_mb"]: row["vcpus"] for row in rows}
    assert held in ({885: None, 1769: None}, {885: vcpus_for(885), 1769: 1.0})
    # the fresh interpreters of the cold figures too, at the template's memory
    cold_share = vcpus_for(int(template_default("ForwarderMemorySize")))
    assert results["cold_start_vcpus"] == (None if held[1769] is None else cold_share)
    (with_ledger,) = results["at_stripe_latency"]["with_ledger"]  # the template's defaults
    assert with_ledger["stream_concurrency"] == template_default("StreamConcurrency")
    assert with_ledger["memory_mb"] == template_default("ForwarderMemorySize")
    assert with_ledger["batch_wall_ms"] > 0
    assert all(
        row["dollars_per_million_events"] > 0 for row in results["at_stripe_latency"]["rows"]
    )
    chart = ElementTree.parse(tmp_path / "bench.svg").getroot()  # noqa: S314 (our own file)
    texts = " ".join(text.text or "" for text in chart.iter("{http://www.w3.org/2000/svg}text"))
    for path in ("forwarder, single-event records", "baseline", "stripe SDK, its example"):
        assert path in texts
