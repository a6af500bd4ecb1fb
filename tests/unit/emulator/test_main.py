"""`python -m devkit.emulator`: a bad --meters file is one clear line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devkit.emulator.__main__ import build_parser, main, options_from_args


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


def test_webhook_needs_a_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--webhook", "http://127.0.0.1:9/hook"]) == 2
    assert capsys.readouterr().err == (
        "stripe-emulator: --webhook needs --webhook-secret-file (the whsec_... secret)\n"
    )


def test_webhooks_and_config_file_settings_reach_the_emulator(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_from_a_file_0123\n")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "error_window_s": 30,
                "known_customers": ["cus_1"],
                "eventbridge": {"event_bus_name": "stripe"},
                "webhooks": [{"url": "http://127.0.0.1:9/a", "secret": "whsec_other_0000"}],
                "seed": 3,
            }
        )
    )
    args = build_parser().parse_args(
        [
            "--config",
            str(config),
            "--webhook",
            "http://127.0.0.1:9/b",
            "--webhook-secret-file",
            str(secret),
        ]
    )

    options = options_from_args(args)

    settings = options["settings"]
    assert settings.error_window_s == 30.0
    assert settings.known_customers == frozenset({"cus_1"})
    assert settings.eventbridge.event_bus_name == "stripe"
    assert [(w.url, w.secret) for w in settings.webhooks] == [
        ("http://127.0.0.1:9/a", "whsec_other_0000"),
        ("http://127.0.0.1:9/b", "whsec_from_a_file_0123"),
    ]
    assert options["seed"] == 3


def test_a_bad_setting_in_the_config_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"error_window_s": -1}))
    assert main(["--port", "0", "--config", str(config)]) == 2
    assert capsys.readouterr().err == "stripe-emulator: error_window_s must be above 0\n"
