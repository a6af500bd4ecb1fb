"""`make venv` without a Python 3.13: scripts/find-python313's advice is printed once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_missing_python_is_reported_once(tmp_path: Path) -> None:
    make, sh = shutil.which("make"), shutil.which("sh")
    if make is None or sh is None:
        pytest.skip("make and sh are needed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "find-python313", tmp_path / "scripts" / "find-python313")
    # the venv stamp's prerequisites; their content does not matter here
    for name in (
        "requirements-dev.txt",
        "layers/meter_relay/requirements.txt",
        "constraints.txt",
        "pyproject.toml",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    bin_dir = tmp_path / "bin"  # only sh, for the script's `#!/usr/bin/env sh`: no python3.13
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to(sh)
    result = subprocess.run(  # noqa: S603 (make, found above)
        [make, "venv"],
        cwd=tmp_path,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.count("Python 3.13 was not found") == 1, result.stderr
    assert not (tmp_path / ".venv").exists()
