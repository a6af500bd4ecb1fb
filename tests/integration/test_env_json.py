"""events/env.json as `make invoke` and `sam local invoke` use it: every function sample runs
with it against what `make local-env` provisions (moto and the emulator on free ports here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devkit.emulator import EmulatorServer
from devkit.emulator.client import EmulatorClient
from devkit.harness import load_function
from devkit.local_env import load_env_vars, provision
from devkit.moto_server import MotoServer
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"


@pytest.fixture
def env_vars(
    aws: AwsEnv, moto_server: MotoServer, emulator: EmulatorClient, emulator_server: EmulatorServer
) -> dict[str, Any]:
    variables: dict[str, Any] = load_env_vars(moto_server.endpoint_url, emulator_server.url)
    provision(variables, moto_server.endpoint_url)
    return variables


def invoke(function_id: str, sample: str, env_vars: dict[str, Any], aws: AwsEnv) -> Any:
    with load_function(TEMPLATE, function_id, env_vars=env_vars, extra_env=aws.env) as function:
        invocation = function.invoke(json.loads((ROOT / "events" / sample).read_text()))
    assert invocation.ok, invocation.error
    return invocation.result


def test_the_samples_run_with_env_json_against_the_local_env(
    env_vars: dict[str, Any], aws: AwsEnv, emulator: EmulatorClient
) -> None:
    refreshed = invoke("RefresherFunction", "refresher-force.json", env_vars, aws)
    assert refreshed["refreshed"] is True
    assert (
        invoke("RefresherFunction", "refresher-schedule.json", env_vars, aws)["refreshed"] is False
    )

    forwarded = invoke("ForwarderFunction", "forwarder-mixed-batch.json", env_vars, aws)
    assert forwarded == {"batchItemFailures": []}
    assert emulator.identifiers()  # delivered to the emulator env.json names
    dlq_url = env_vars["ForwarderFunction"]["DEAD_LETTER_QUEUE_URL"]
    letters = aws.client("sqs").receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    assert letters.get("Messages")  # the invalid events went to the DLQ env.json names

    dry_run = invoke("DlqReplayFunction", "dlq-replay-dry-run.json", env_vars, aws)
    assert dry_run["complete"] is True
    assert [o["code"] for o in dry_run["outcomes"]] == ["payload_no_customer_defined"]
    still = aws.client("sqs").receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0
    )
    assert len(still["Messages"]) == len(letters["Messages"])  # a dry run changes nothing


def test_env_json_names_one_dead_letter_queue_and_the_usage_queue(
    env_vars: dict[str, Any],
) -> None:
    forwarder = env_vars["ForwarderFunction"]
    replay = env_vars["DlqReplayFunction"]
    assert forwarder["DEAD_LETTER_QUEUE_URL"] == replay["DEAD_LETTER_QUEUE_URL"]
    assert replay["USAGE_QUEUE_URL"] != replay["DEAD_LETTER_QUEUE_URL"]
