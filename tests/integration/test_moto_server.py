"""The moto server helper, and a harness-invoked function reaching it through AWS_ENDPOINT_URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from devkit.harness import load_function
from devkit.moto_server import MotoServer, aws_env
from tests.plugins.aws import AwsEnv

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).parent.parent / "fixtures" / "harness" / "template.yaml"
ROOT = Path(__file__).parent.parent.parent


def sqs_client(endpoint_url: str) -> SQSClient:
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    return session.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")


def test_function_sends_to_sqs_through_moto(aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    queue_url = sqs.create_queue(QueueName="local-jobs")["QueueUrl"]
    env_vars = {"SqsFunction": {"QUEUE_NAME": "local-jobs"}}  # a GetAtt in the template

    with load_function(
        TEMPLATE, "SqsFunction", env_vars=env_vars, extra_env=aws_env(aws.endpoint_url)
    ) as function:
        first = function.invoke({"messages": ["a", "b"]})
        second = function.invoke({"messages": ["c"]})

    assert first.raise_for_error()["queue_url"] == queue_url
    assert second.cold_start is False
    assert second.raise_for_error()["client_id"] == first.result["client_id"]  # reused client
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(message["Body"] for message in received) == ["a", "b", "c"]
    assert {message["MessageId"] for message in received} == {
        *first.result["message_ids"],
        *second.result["message_ids"],
    }


def test_aws_fixture_points_default_clients_at_moto(aws: AwsEnv) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == aws.endpoint_url
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"
    aws.client("sqs").create_queue(QueueName="seen-by-default-client")

    default_client = boto3.session.Session().client("sqs")  # configured from os.environ only

    assert default_client.list_queues()["QueueUrls"] == [
        f"{aws.endpoint_url}/123456789012/seen-by-default-client"
    ]


def test_reset_drops_every_resource(moto_server: MotoServer, aws: AwsEnv) -> None:
    sqs = aws.client("sqs")
    ssm = aws.client("ssm")
    sqs.create_queue(QueueName="doomed")
    ssm.put_parameter(Name="/doomed", Value="v", Type="SecureString")

    moto_server.reset()

    assert "QueueUrls" not in sqs.list_queues()
    assert ssm.describe_parameters()["Parameters"] == []


def test_aws_fixture_starts_each_test_empty(
    moto_server: MotoServer, request: pytest.FixtureRequest
) -> None:
    sqs_client(moto_server.endpoint_url).create_queue(QueueName="left-by-an-earlier-test")

    aws: AwsEnv = request.getfixturevalue("aws")

    assert "QueueUrls" not in aws.client("sqs").list_queues()


def test_moto_server_runs_as_a_module_and_stops_after_its_lifetime() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "devkit.moto_server", "--port", "0", "--lifetime", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            endpoint_url = process.stdout.readline().strip()
            assert endpoint_url.startswith("http://127.0.0.1:")
            sqs = sqs_client(endpoint_url)
            sqs.create_queue(QueueName="from-the-cli")
            assert sqs.list_queues()["QueueUrls"] == [f"{endpoint_url}/123456789012/from-the-cli"]
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
