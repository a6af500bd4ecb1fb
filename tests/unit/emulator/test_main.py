"""`python -m devkit.emulator`: a bad --meters file is one clear line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devkit.emulator.__main__ import main


@pytest.mark.parametrize(
    ("meters", "message"),
    [
        (
            [{"id": "mtr_a", "event_name": "a"}, {"id": "mtr_b", "display_name": "B"}],
            "meters[1]: Missing event_name.",
        ),
        (
            [{"event_name": "a", "default_aggregation": {"formula": "max"}}],
            "meters[0]: Invalid default_aggregation[formula]: 'max'.",
        ),
        ({"event_name": "a"}, "expected a JSON list of meters (objects)"),
        (["a"], "expected a JSON list of meters (objects)"),
    ],
)
def test_bad_meters_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], meters: Any, message: str
) -> None:
    path = tmp_path / "meters.json"
    path.write_text(json.dumps(meters))
    assert main(["--port", "0", "--meters", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"stripe-emulator: {path}: {message}\n"
    assert captured.out == ""


def test_meters_file_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meters.json"
    path.write_text("[{")
    assert main(["--port", "0", "--meters", str(path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"stripe-emulator: {path}: not JSON: ")
