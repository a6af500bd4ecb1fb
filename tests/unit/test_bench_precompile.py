"""The bench's cold figures are for the code as the layer ships it: compiled to .pyc."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from devkit.bench import precompile_project


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
