"""AWS for tests: one moto server per session, reset and pointed at by every test that asks.

Keep queues shallow: moto recounts a queue on every send, so it slows down markedly as a queue
deepens (about 40 sends/s at a depth of 1,000). Do not measure throughput through moto.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
import pytest
from botocore.config import Config

from devkit.moto_server import DEFAULT_REGION, MotoServer, aws_env

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

# set by a developer's shell, these would send boto3 to a real account or ignore the endpoint
_LEAKY_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


@dataclass(frozen=True)
class AwsEnv:
    """What a test needs to reach moto: its URL, the variables set, and boto3 clients."""

    endpoint_url: str
    env: dict[str, str]
    region: str = DEFAULT_REGION

    @overload
    def client(self, service: Literal["sqs"]) -> SQSClient: ...
    @overload
    def client(self, service: Literal["ssm"]) -> SSMClient: ...
    @overload
    def client(self, service: Literal["secretsmanager"]) -> SecretsManagerClient: ...
    @overload
    def client(self, service: Literal["lambda"]) -> LambdaClient: ...
    @overload
    def client(self, service: str, config: Config | None = None) -> Any: ...
    def client(self, service: str, config: Config | None = None) -> Any:
        # explicit credentials: boto3's default session may have cached others already
        session: Any = boto3.session.Session(
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=self.env["AWS_SESSION_TOKEN"],
            region_name=self.region,
        )
        return session.client(service, endpoint_url=self.endpoint_url, config=config)


def _clear_powertools_caches() -> None:
    """Powertools caches parameters per process, which here outlives a test."""
    try:
        from aws_lambda_powertools.utilities import parameters
    except ImportError:
        return
    parameters.clear_caches()  # type: ignore[no-untyped-call, unused-ignore]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the whole session (starting one takes about a second)."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsEnv]:
    """An empty moto, with AWS_ENDPOINT_URL and dummy credentials in os.environ."""
    moto_server.reset()
    env = aws_env(moto_server.endpoint_url)
    for name in _LEAKY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_powertools_caches()
    yield AwsEnv(endpoint_url=moto_server.endpoint_url, env=env)
    _clear_powertools_caches()
