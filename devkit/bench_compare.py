"""This checkout's forwarder against another revision's, in paired rounds: did a change move it?

`make bench` compares the forwarder with baselines; between two `make bench` runs this machine
drifts by more than most changes to the forwarder (a fifth, from run to run). Here both
forwarders run in one process, each in its own execution environment (its own code and layer,
this virtualenv's third-party packages), on the same payloads, back to back in each round, the
first of them alternating: each round's own ratio cancels the drift (`devkit.bench.race_pair`).
It prints, for 10,000 single-event records and for 100 envelopes of 100, the median change in
CPU per event (this checkout against the other) and the middle half of the rounds' changes.

    .venv/bin/python -m devkit.bench_compare HEAD~1          # a revision of this repository
    .venv/bin/python -m devkit.bench_compare ../other-clone  # or a checkout's directory
    .venv/bin/python -m devkit.bench_compare HEAD~1 --ledger # both writing the delivery ledger

Nothing here is asserted: a change within the middle half is not one this machine can see.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from devkit.bench import Increase, bench_forwarder, race_pair, sign_as_the_layer, stack
from devkit.local_stack import METERS, ROOT, TEMPLATE, _server_process


@contextmanager
def checkout(other: str) -> Iterator[Path]:
    """The template of `other`: a directory holding one, or a revision of this repository
    (exported to a temporary directory, removed afterwards)."""
    directory = Path(other)
    if (directory / "template.yaml").is_file():
        yield directory / "template.yaml"
        return
    archive = subprocess.run(  # noqa: S603 (git, with a revision the developer named)
        ["git", "archive", "--format=tar", other],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise SystemExit(
            f"{other!r} is neither a checkout's directory nor a revision: "
            f"{archive.stderr.decode(errors='replace').strip()}"
        )
    with tempfile.TemporaryDirectory(prefix="meter-relay-compare-") as exported:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(exported, filter="data")
        yield Path(exported) / "template.yaml"


def describe(shape: str, increase: Increase) -> str:
    return (
        f"{shape}: CPU per event {increase.median:+.1%} against the other "
        f"({increase.spread()}, {increase.rounds} rounds)"
    )


def main(argv: list[str] | None = None) -> int:
    sign_as_the_layer("devkit.bench_compare", argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="a revision of this repository, or a checkout's directory")
    parser.add_argument("--rounds", type=int, default=41, help="paired rounds per shape")
    parser.add_argument("--events", type=int, default=10_000, help="events per batch")
    parser.add_argument(
        "--ledger", action="store_true", help="both forwarders write the delivery ledger"
    )
    args = parser.parse_args(argv)
    with ExitStack() as scope:
        other = scope.enter_context(checkout(args.other))
        emulator = scope.enter_context(
            _server_process(
                ["devkit.emulator", "--meters", str(METERS), "--request-log-size", "100"], 900
            )
        )
        moto = scope.enter_context(_server_process(["devkit.moto_server"], 900))
        setup = scope.enter_context(stack(emulator, moto))
        their_singles, their_envelopes, close_theirs = bench_forwarder(
            setup, args.events, ledger=args.ledger, template=other
        )
        scope.callback(close_theirs)
        our_singles, our_envelopes, close_ours = bench_forwarder(
            setup, args.events, ledger=args.ledger, template=TEMPLATE
        )
        scope.callback(close_ours)
        for shape, theirs, ours in (
            ("single-event records", their_singles, our_singles),
            ("envelopes of 100", their_envelopes, our_envelopes),
        ):
            print(describe(shape, race_pair(theirs, ours, args.events, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
