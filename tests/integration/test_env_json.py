"""events/env.json as `make invoke` and `sam local invoke` use it: every function sample runs
with it against what `make local-env` provisions (moto and the emulator on free ports here)."""

from __future__ import annotations

import json
import re
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


# A stack's name (CloudFormation): a letter, then letters, digits and hyphens.
STACK_NAME = r"[A-Za-z][-A-Za-z0-9]{0,127}"


def test_no_local_name_is_one_a_deployed_stack_can_have() -> None:
    """`sam local invoke` with real credentials reaches the real account: were env.json's names
    those of a stack (as the default stack's were), the refresher would read its live key and
    overwrite its session with an emulator's token. The names a stack derives from its own
    name (secret, session parameter, queues) must never match env.json's."""
    env_json = json.loads((ROOT / "events" / "env.json").read_text(encoding="utf-8"))
    marker = "STACKNAMEMARKER"
    derived = []
    for function in ("ForwarderFunction", "RefresherFunction"):
        spec = load_function(TEMPLATE, function, stack_name=marker).environment
        derived.append(spec["SESSION_TOKEN_PARAMETER"])
        derived.append(spec["METER_CATALOG_PATH"])
    template = (ROOT / "template.yaml").read_text(encoding="utf-8")
    derived.append("${AWS::StackName}/stripe-secret-key")  # the secret's Name
    derived += ["${AWS::StackName}-usage", "${AWS::StackName}-usage-dlq"]  # the queues'
    for name in derived[4:]:
        assert f'"{name}"' in template, name
    patterns = [
        re.compile(re.escape(name.replace("${AWS::StackName}", marker)).replace(marker, STACK_NAME))
        for name in derived
    ]
    local_names = []
    for section in env_json.values():
        for variable in ("SESSION_TOKEN_PARAMETER", "STRIPE_SECRET_ID", "METER_CATALOG_PATH"):
            if variable in section:
                local_names.append(section[variable])
        for variable in ("DEAD_LETTER_QUEUE_URL", "USAGE_QUEUE_URL"):
            if variable in section:
                local_names.append(section[variable].rsplit("/", 1)[-1])
    assert len(local_names) >= 7
    for name in local_names:
        assert not any(pattern.fullmatch(name) for pattern in patterns), name
    # the patterns do match what a stack named "meter-relay" has (the old env.json's names)
    old = ["/meter-relay/stripe/meter-event-session", "meter-relay/stripe-secret-key"]
    assert all(any(pattern.fullmatch(name) for pattern in patterns) for name in old)
