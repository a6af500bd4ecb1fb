"""The producer examples (examples/): what each puts on the queue, checked against the published
schema (schema/message.schema.json).

- Node (AWS SDK v3): the bodies it builds, the example itself sending to moto server, and its
  own `node --test` file. @aws-sdk/client-sqs comes from package-lock.json through `npm ci` into
  examples/node/node_modules (git-ignored; a few seconds, once).
- Java: UsageMessages.java (the JDK only) is compiled and run, its bodies validated. SendUsage.java
  needs the AWS SDK for Java: compiled (`mvn -o compile`) only where Maven has it already.
A missing tool (node, npm, javac) is a skip that says so, never a pass.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.commands import ROOT, run
from tests.integration.test_producer import drain
from tests.message_schema import events_in
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

NODE = ROOT / "examples" / "node"
JAVA = ROOT / "examples" / "java"
JAVA_SOURCES = JAVA / "src" / "main" / "java" / "example"
NETWORK_TROUBLE = re.compile(r"ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET|network")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: this example is not run here")
    return path


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """examples/node/node_modules as package-lock.json says, installed by `npm ci` when stale."""
    npm = tool("npm")
    installed = NODE / "node_modules" / ".package-lock.json"  # npm's record of what it installed
    lock = NODE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        completed = subprocess.run(  # noqa: S603 (npm, found above)
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if completed.returncode != 0 and NETWORK_TROUBLE.search(completed.stderr):
            pytest.skip(f"the npm registry cannot be reached: {completed.stderr.strip()[-300:]}")
        assert completed.returncode == 0, completed.stderr
    return NODE / "node_modules"


def test_node_message_bodies_are_valid() -> None:
    lines = run(tool("node"), "usage-messages.mjs", cwd=NODE).splitlines()
    messages = [events_in(line) for line in lines]
    assert [len(events) for events in messages] == [1, 2]  # one single event, one envelope
    [single], envelope = messages
    assert single["identifier"] == "req_8f2c"
    assert single["timestamp"] == "2026-06-01T12:00:00.000Z"
    assert all(event["identifier"] for event in envelope)  # given one before the send
    assert envelope[1]["payload"]["stripe_customer_id"] == 'cus_"q"\n'  # escaped, and back


def test_node_example_sends_valid_messages_to_the_queue(
    aws: AwsEnv, node_modules: Path, tmp_path: Path
) -> None:
    queue_url = aws.client("sqs").create_queue(QueueName="usage-node")["QueueUrl"]
    env = {**aws.env, "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    output = run(tool("node"), "send-usage.mjs", cwd=NODE, env={**env, "QUEUE_URL": queue_url})
    report = json.loads(output)
    assert report["failed"] == []
    assert len(report["sent"]) == 3  # 25 events, envelopes of 10
    events = [event for body in drain(aws, queue_url) for event in events_in(body)]
    assert sorted(event["identifier"] for event in events) == sorted(
        f"node-example-{i}" for i in range(25)
    )
    assert {event["payload"]["value"] for event in events} == {1, 2, 3, 4}  # JSON numbers


def test_node_example_own_tests_pass(node_modules: Path) -> None:
    """Refused entries resent, permanent ones reported, limits kept: send-usage.test.mjs."""
    output = run(tool("node"), "--test", "send-usage.test.mjs", cwd=NODE)
    assert re.search(r"^# pass [1-9]", output, re.M)
    assert re.search(r"^# fail 0$", output, re.M)


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UsageMessages.java compiled with warnings as errors: it needs nothing but the JDK."""
    classes = tmp_path_factory.mktemp("java-classes")
    run(tool("javac"), "-Xlint:all", "-Werror", "-d", classes, JAVA_SOURCES / "UsageMessages.java",
        cwd=classes)  # fmt: skip
    return classes


def test_java_message_bodies_are_valid(java_classes: Path) -> None:
    java = tool("java")
    lines = run(java, "-cp", java_classes, "example.UsageMessages", cwd=java_classes).splitlines()
    messages = [events_in(line) for line in lines]
    assert [len(events) for events in messages] == [1, 2]
    assert messages[0][0]["identifier"] == "req_8f2c"
    assert messages[1][1]["payload"]["stripe_customer_id"] == 'cus_"q"\n'

    generated = run(java, "-cp", java_classes, "example.UsageMessages", "23", "5", cwd=java_classes)
    envelopes = [events_in(line) for line in generated.splitlines()]
    assert [len(events) for events in envelopes] == [5, 5, 5, 5, 3]
    identifiers = [event["identifier"] for events in envelopes for event in events]
    assert len(set(identifiers)) == 23
    assert {f"java-example-{i}" for i in range(23) if i % 3} <= set(identifiers)


def test_java_sender_compiles_against_the_sdk(tmp_path: Path) -> None:
    """SendUsage.java calls the AWS SDK for Java 2.x: compiled where Maven has it offline."""
    mvn = tool("mvn")
    version = re.search(r"<aws.sdk.version>(.+)</aws.sdk.version>", (JAVA / "pom.xml").read_text())
    assert version is not None
    repository = Path.home() / ".m2" / "repository" / "software" / "amazon" / "awssdk"
    if not (repository / "sqs" / version[1]).is_dir():
        pytest.skip(f"the AWS SDK for Java {version[1]} is not in ~/.m2: SendUsage.java not built")
    shutil.copytree(JAVA, tmp_path / "java", ignore=shutil.ignore_patterns("target"))
    run(mvn, "-o", "-q", "compile", cwd=tmp_path / "java")
