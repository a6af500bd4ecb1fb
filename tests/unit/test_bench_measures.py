"""What `make bench` measures, and how: its figures are for the code as the layer ships it,
and a small cost is measured in paired rounds. (Speed itself is never asserted in a test.)"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
from pathlib import Path

import pytest

from devkit import bench
from devkit.bench import (
    Contestant,
    median_confidence,
    paired_increase,
    precompile_project,
    race_pair,
    sign_as_the_layer,
)


def test_the_project_modules_are_compiled_even_where_python_writes_no_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE=1
    library = tmp_path / "layers" / "meter_relay" / "meter_relay" / "forwarder.py"
    handler = tmp_path / "functions" / "forwarder" / "app.py"
    elsewhere = tmp_path / "devkit" / "bench.py"
    for source in (library, handler, elsewhere):
        source.parent.mkdir(parents=True)
        source.write_text("VALUE = 1\n")

    precompile_project(tmp_path)

    assert Path(importlib.util.cache_from_source(str(library))).is_file()
    assert Path(importlib.util.cache_from_source(str(handler))).is_file()
    assert not Path(importlib.util.cache_from_source(str(elsewhere))).exists()


class Exec(Exception):
    """os.execve, caught: the command and environment it was given."""


def execve(path: str, command: list[str], env: dict[str, str]) -> None:
    raise Exec(path, command, env)


def test_the_bench_runs_itself_again_to_sign_as_the_layer_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layer ships no awscrt: a bench that would sign its ledger PUTs with awscrt's SigV4
    runs itself again with botocore's pure-Python signer, with the same arguments."""
    monkeypatch.setattr(bench, "HAS_CRT", True)
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.delenv("BOTO_DISABLE_CRT", raising=False)

    with pytest.raises(Exec) as ran:
        sign_as_the_layer("devkit.bench", ["--latency-ms", "0"])

    path, command, env = ran.value.args
    assert path == sys.executable
    assert command == [sys.executable, "-m", "devkit.bench", "--latency-ms", "0"]
    assert env["BOTO_DISABLE_CRT"] == "true"


@pytest.mark.parametrize(("has_crt", "chosen"), [(False, None), (True, "false"), (False, "true")])
def test_a_bench_signing_as_the_layer_or_told_how_to_sign_runs_on(
    monkeypatch: pytest.MonkeyPatch, has_crt: bool, chosen: str | None
) -> None:
    monkeypatch.setattr(bench, "HAS_CRT", has_crt)
    monkeypatch.setattr(os, "execve", execve)
    if chosen is None:
        monkeypatch.delenv("BOTO_DISABLE_CRT", raising=False)
    else:
        monkeypatch.setenv("BOTO_DISABLE_CRT", chosen)

    sign_as_the_layer("devkit.bench", [])  # returns: no Exec


def test_each_round_is_its_own_ratio_so_drift_between_rounds_cancels() -> None:
    # the machine twice as fast in the second round, three times in the third: a variant
    # that always costs 10% more shows 10% in every round
    base = [2.0, 1.0, 3.0, 1.5, 2.5]
    variant = [cpu * 1.1 for cpu in base]
    increase = paired_increase(base, variant)
    assert increase.median == pytest.approx(0.10)
    assert increase.low == pytest.approx(0.10)
    assert increase.high == pytest.approx(0.10)
    assert increase.rounds == 5


def test_the_middle_half_spans_the_rounds_between_the_quartiles() -> None:
    base = [1.0] * 5
    variant = [1.01, 1.05, 1.10, 1.20, 1.50]
    increase = paired_increase(base, variant)
    assert increase.median == pytest.approx(0.10)
    assert 0.01 < increase.low < 0.10 < increase.high < 0.50
    one = paired_increase([1.0], [1.2])
    assert (one.median, one.low, one.high) == pytest.approx((0.2, 0.2, 0.2))


def test_the_medians_confidence_is_the_order_statistics_about_the_middle() -> None:
    """100 rounds: the 40th and 61st increases in order (n/2 -+ 0.98 sqrt(n)), whatever the
    order the rounds came in; more rounds, a narrower interval about the same median."""
    increases = [n / 100 for n in range(100)]
    assert median_confidence(increases[::-1]) == (0.39, 0.60)
    many = [n / 400 for n in range(400)]
    low, high = median_confidence(many)
    assert 0.39 < low < statistics.median(many) < high < 0.60
    assert median_confidence([0.2]) == (0.2, 0.2)
    increase = paired_increase([1.0] * 100, [1.0 + value for value in increases])
    assert increase.confidence == pytest.approx((0.39, 0.60))


def test_a_pair_runs_back_to_back_the_first_of_them_alternating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[str] = []
    clock = iter(range(1, 1000))  # CPU seconds, one more at each reading
    monkeypatch.setattr("devkit.bench.cpu_seconds", lambda: float(next(clock)))

    def contestant(name: str) -> Contestant:
        return Contestant(prepare=lambda: name, run=runs.append)

    base, variant = contestant("base"), contestant("variant")
    increase = race_pair(base, variant, events=100, rounds=4)

    assert runs == ["base", "variant", "variant", "base"] * 2
    assert increase.rounds == 4
    assert increase.median == 0.0  # a second each, read by the clock above
    assert base.cpus == variant.cpus == []  # the race's own figures are left alone
