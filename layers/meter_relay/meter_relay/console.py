"""What `meter-relay` shows: tables or one JSON document on stdout (--output), progress and
warnings on stderr, and the question asked before anything is billed, cancelled or deleted."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO


class NotConfirmed(Exception):
    """The operator did not say yes (or could not be asked): nothing was done."""


class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self._stream = stream or sys.stderr  # the stream of now, not of import time
        self._live = self._stream.isatty()

    def step(self, note: str = "") -> None:
        self.done += 1
        if self._live:
            width = 30
            filled = min(width, width * self.done // self.total)
            bar = "#" * filled + "." * (width - filled)
            self._stream.write(f"\r{self.label} [{bar}] {self.done}/~{self.total} {note[:30]:<30}")
            self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\n")


def table(title: str, rows: Iterable[tuple[str, Any]], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    rows = list(rows)
    stream.write(f"{title}\n")
    if not rows:
        stream.write("  (none)\n")
        return
    width = max(len(str(name)) for name, _ in rows)
    for name, value in rows:
        stream.write(f"  {name!s:<{width}}  {value:>8}\n")


def line(text: str = "") -> None:
    sys.stdout.write(f"{text}\n")


def warn(text: str) -> None:
    """A line for the operator on stderr (never mixed into the output on stdout)."""
    sys.stderr.write(f"{text}\n")


def document(data: Any) -> None:
    """--output json: one JSON document on stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def confirm(summary: list[str], question: str, *, yes: bool, refusal: str) -> None:
    """Show what is about to happen and ask, on a terminal; --yes skips the question. Away from
    a terminal, without --yes, nothing is done (NotConfirmed: `refusal` says what to do)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed(refusal)
    for text in summary:
        warn(text)
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise NotConfirmed("not confirmed: nothing was done")
