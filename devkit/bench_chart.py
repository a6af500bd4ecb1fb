"""The chart `make bench` draws (docs/bench.svg, shown by the README): events per second on this
machine, and what a million events cost in Lambda compute, for the forwarder, the baseline and
the official SDK, side by side.

The cost is Lambda's duration charge at the template's memory, from the CPU each path spent per
event: CPU seconds / the vCPU share Lambda gives that memory (1,769 MB is one vCPU) x GB x the
price per GB-second. It is the floor of what an invocation costs (CPU-bound); at Stripe's
latency the wait is billed too (make bench's second table). Plain SVG, no plotting library.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape

from devkit.cpu_share import MB_PER_VCPU

PRICE_PER_GB_SECOND = 0.0000133334  # Lambda, arm64, us-east-1

# (label, key of events/s, key of CPU seconds per 100,000 events) in results.json
PATHS = [
    (
        "forwarder, single-event records",
        "forwarder_events_per_s",
        "forwarder_cpu_s_per_100k_events",
    ),
    (
        "forwarder, envelopes of 100",
        "forwarder_envelope_events_per_s",
        "forwarder_envelope_cpu_s_per_100k_events",
    ),
    ("baseline: pre-serialised posts", "baseline_events_per_s", "baseline_cpu_s_per_100k_events"),
    ("stripe SDK, 100-event batches", "sdk_batched_events_per_s", "sdk_batched_cpu_s_per_100k"),
    ("stripe SDK, its example", "sdk_example_events_per_s", "sdk_example_cpu_s_per_100k"),
]
COLOURS = ["#2b6cb0", "#4299e1", "#718096", "#dd6b20", "#f6ad55"]


def dollars_per_million(cpu_s_per_100k: float, memory_mb: int) -> float:
    seconds = cpu_s_per_100k * 10 / (memory_mb / MB_PER_VCPU)
    return seconds * memory_mb / 1024 * PRICE_PER_GB_SECOND


def render(results: dict[str, Any], memory_mb: int) -> str:
    """The SVG of two bar panels from make bench's results."""
    rows = [
        (label, float(results[rate]), dollars_per_million(float(results[cpu]), memory_mb))
        for label, rate, cpu in PATHS
        if rate in results and cpu in results
    ]
    width, label_w, bar_w, row_h, top = 900, 250, 170, 26, 56
    height = top + row_h * len(rows) + 40
    most_rate = max(rate for _, rate, _ in rows)
    most_cost = max(cost for _, _, cost in rows)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{label_w}" y="22" font-weight="bold">events per second (this machine)</text>',
        f'<text x="{label_w + bar_w + 160}" y="22" font-weight="bold">'
        f"Lambda compute, $ per million events ({memory_mb} MB)</text>",
        f'<text x="{label_w + bar_w + 160}" y="40" fill="#555" font-size="11">'
        "from CPU per event; lower bound (CPU-bound), log scale</text>",
    ]
    low = min(cost for _, _, cost in rows)
    span = math.log10(most_cost) - math.log10(low) or 1.0
    for n, (label, rate, cost) in enumerate(rows):
        y = top + n * row_h
        colour = COLOURS[n % len(COLOURS)]
        rate_w = max(1.0, bar_w * rate / most_rate)
        cost_w = 10 + (bar_w - 10) * (math.log10(cost) - math.log10(low)) / span
        x2 = label_w + bar_w + 160
        out += [
            f'<text x="{label_w - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{label_w}" y="{y + 4}" width="{rate_w:.1f}" height="16" fill="{colour}"/>',
            f'<text x="{label_w + rate_w + 6:.1f}" y="{y + 16}">{rate:,.0f}</text>',
            f'<rect x="{x2}" y="{y + 4}" width="{cost_w:.1f}" height="16" fill="{colour}"/>',
            f'<text x="{x2 + cost_w + 6:.1f}" y="{y + 16}">${cost:.4f}</text>',
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"
