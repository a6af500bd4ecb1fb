"""`python -m devkit.bench_compare` runs end to end, small: both forwarders deliver, in paired
rounds, and it says what changed. No figure is judged (a test never times anything)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from devkit.local_stack import ROOT

pytestmark = pytest.mark.integration

LINE = re.compile(
    r"^(single-event records|envelopes of 100): CPU per event [+-]\d+\.\d% against the other "
    r"\(95% confidence [+-]\d+\.\d% to [+-]\d+\.\d%; "
    r"middle half [+-]\d+\.\d% to [+-]\d+\.\d%, 3 rounds\)$"
)


def compare(other: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (our interpreter, our module)
        [
            sys.executable,
            "-m",
            "devkit.bench_compare",
            other,
            "--rounds",
            "3",
            "--events",
            "200",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("other", "options"),
    [("HEAD", ()), (str(ROOT), ("--ledger",))],
    ids=["revision", "directory-with-ledger"],
)
def test_a_revision_or_a_checkout_is_compared_in_paired_rounds_of_both_shapes(
    other: str, options: tuple[str, ...]
) -> None:
    completed = compare(other, *options)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if not line.startswith("{")]
    assert [line.split(":")[0] for line in lines] == ["single-event records", "envelopes of 100"]
    assert all(LINE.match(line) for line in lines), lines


def test_what_is_neither_a_revision_nor_a_checkout_is_refused_in_one_line() -> None:
    completed = compare("no-such-revision-anywhere")
    assert completed.returncode == 1
    assert "is neither a checkout's directory nor a revision" in completed.stderr
    assert "Traceback" not in completed.stderr
