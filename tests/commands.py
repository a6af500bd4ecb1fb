"""Running a command from a test: its output, or an AssertionError that shows all it said."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(
    *command: str | Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> str:
    """The command's stdout; it must exit 0."""
    completed = subprocess.run(  # noqa: S603 (the tests' own tools and interpreters)
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, f"{command}:\n{completed.stdout}\n{completed.stderr}"
    return completed.stdout
