"""The producer helper as services use it: one copied file, boto3 alone, Python 3.9 to 3.13.

Each interpreter (pyenv's, or python3.X on PATH) runs producer_check.py with `-S` (its own
site-packages unseen), a lone copy of producer.py, and boto3 installed for it into
.cache/producer-python/ (git-ignored; the first run downloads boto3 from PyPI): 3.9 gets
boto3's last release for it (constraints-producer-py39.txt), later ones constraints.txt's. An
interpreter this machine lacks is skipped, by name, never passed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.commands import ROOT, run
from tests.integration.test_producer import REFUSALS, drain
from tests.message_schema import events_in
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

PRODUCER = ROOT / "layers" / "meter_relay" / "meter_relay" / "producer.py"
CHECK = Path(__file__).with_name("producer_check.py")
CACHE = ROOT / ".cache" / "producer-python"
# (constraints, the Python version pip resolves them for): boto3 1.43 needs 3.10
PY39_PINS = (ROOT / "constraints-producer-py39.txt", "3.9")
PY310_PINS = (ROOT / "constraints.txt", "3.10")


def find_python(version: str) -> str | None:
    """pyenv's newest 3.X.*, else python3.X on PATH (a pyenv shim that answers counts too)."""
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    installed = sorted(
        glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
        key=lambda path: [int(part) for part in Path(path).parts[-3].split(".") if part.isdigit()],
    )
    for candidate in [*reversed(installed), shutil.which(f"python{version}")]:
        if candidate and _reports(candidate, version):
            return candidate
    return None


def _reports(python: str, version: str) -> bool:
    try:
        completed = subprocess.run(  # noqa: S603 (an interpreter found above)
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return False
    return completed.returncode == 0 and completed.stdout.strip() == version


def boto3_for(version: str) -> Path:
    """A folder holding boto3 and its dependencies for this Python version (and nothing else)."""
    constraints, resolved_for = PY39_PINS if version == "3.9" else PY310_PINS
    key = hashlib.sha256(f"{resolved_for}\n{constraints.read_text()}".encode()).hexdigest()[:16]
    target = CACHE / f"py{resolved_for}-{key}"
    if target.is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".installing-", dir=CACHE))
    try:
        run(
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--only-binary=:all:", "--python-version", resolved_for,
            "--target", scratch, "-c", constraints, "boto3",
            cwd=CACHE,
        )  # fmt: skip
    except AssertionError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        scratch.rename(target)  # whole or not at all; another run may have got there first
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def run_check(python: str, site: Path, queue_url: str, aws: AwsEnv, tmp_path: Path) -> Any:
    """producer_check.py under `python`, with only boto3 and the copied helper importable."""
    service = tmp_path / "service"
    service.mkdir()
    shutil.copy(PRODUCER, service / "meter_relay_producer.py")  # as the docs say: copy one file
    shutil.copy(CHECK, service / CHECK.name)
    env = {
        **aws.env,
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(site),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    output = run(
        python,
        "-S",
        service / CHECK.name,
        cwd=service,
        env=env,
        input=json.dumps({"queue_url": queue_url, "refusals": REFUSALS}),
    )
    return json.loads(output)


@pytest.mark.parametrize("version", ["3.9", "3.10", "3.11", "3.12", "3.13"])
def test_the_copied_helper_sends_on_each_python(version: str, aws: AwsEnv, tmp_path: Path) -> None:
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv or PATH): helper not run on it")
    site = boto3_for(version)
    queue_url = aws.client("sqs").create_queue(QueueName=f"usage-py{version.replace('.', '')}")[
        "QueueUrl"
    ]

    result = run_check(python, site, queue_url, aws, tmp_path)

    assert result["python"].startswith(f"{version}.")
    pins = (PY39_PINS if version == "3.9" else PY310_PINS)[0].read_text()
    assert f"boto3=={result['boto3']}\n" in pins  # the pinned boto3, not one found elsewhere
    assert result["caller_events_untouched"]

    # 23 events, envelopes of 5: five messages, each on the queue, each valid by the schema
    sent = result["sent"]
    assert sent["failed"] == []
    assert [len(events) for _, events in sent["sent"]] == [5, 5, 5, 5, 3]
    received = [event for body in drain(aws, queue_url) for event in events_in(body)]
    expected = [event for _, events in sent["sent"] for event in events]
    assert sorted(received, key=lambda e: e["identifier"]) == sorted(
        expected, key=lambda e: e["identifier"]
    )
    identifiers = [event["identifier"] for event in received]
    assert len(set(identifiers)) == 23  # every event has one: the caller's, or one given here
    assert {f"p-{i}" for i in range(23) if i % 3} <= set(identifiers)

    # a transient refusal sent again after a backoff; a permanent one reported with its code
    refused = result["refused"]
    assert [message_id for message_id, _ in refused["sent"]] == ["id-0", "id-1"]
    assert refused["sleeps"] == 1
    [(events, reason)] = refused["failed"]
    assert len(events) == 1
    assert reason.startswith("InvalidMessageContents")

    # an event no message can hold: reported as such, no call made
    [(events, reason)] = result["oversized"]["failed"]
    assert reason.startswith("MessageTooLong: ")
    assert result["oversized"]["sent"] == []
