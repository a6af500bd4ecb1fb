"""The CLI's last resort: a defect of its own is one line and exit status 4, distinct from
the findings a script acts on (1: a mismatch, an unknown event)."""

from __future__ import annotations

import pytest

from meter_relay import ledger_cli
from meter_relay.cli import Exit, main


def broken(*_: object) -> list[str]:
    raise RuntimeError("a defect")


def test_an_internal_error_is_one_line_and_exit_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ledger_cli, "_identifiers", broken)
    assert main(["trace", "x"]) == Exit.INTERNAL
    assert capsys.readouterr().err == (
        "meter-relay: internal error: RuntimeError: a defect "
        "(run again with --debug and report it)\n"
    )
    with pytest.raises(RuntimeError, match="a defect"):  # --debug: the traceback
        main(["trace", "x", "--debug"])
