"""The refresher: renews the meter event session in SSM before it expires.

Only this function and the operator tools read the secret key. A failure (Stripe, network,
the secret not set yet) raises with a message that names no secret, after counting a
`RefreshFailures` metric that an alarm watches.
"""

from __future__ import annotations

import functools
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.config import AWS_CLIENT_CONFIG, RefresherConfig
from meter_relay.observability import logger, metrics
from meter_relay.secret_key import SECRET_PLACEHOLDER as SECRET_PLACEHOLDER  # re-exported
from meter_relay.secret_key import SecretKeyError, read_secret_key
from meter_relay.session import RefreshError, RefreshSummary, SessionStore, refresh_session
from meter_relay.stripe_client import StripeApi, StripeHttp


class Refresher:
    """What lives across invocations: clients, the HTTP pool, the cached secret."""

    def __init__(self, config: RefresherConfig, store: SessionStore, secrets: SecretsProvider):
        self.config = config
        self.store = store
        self._secrets = secrets
        self._http = StripeHttp(config.api_base, config.api_version, pool_size=1)

    @classmethod
    def from_environment(cls) -> Refresher:
        config = RefresherConfig.from_env()
        session = boto3.session.Session()
        ssm = session.client("ssm", config=AWS_CLIENT_CONFIG)
        secretsmanager = session.client("secretsmanager", config=AWS_CLIENT_CONFIG)
        store = SessionStore(config.session_parameter, ssm)
        return cls(config, store, SecretsProvider(boto3_client=secretsmanager))

    def _secret_key(self) -> str:
        try:
            return read_secret_key(self._secrets, self.config.secret_id)
        except SecretKeyError as error:
            raise RefreshError(str(error)) from None

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        force = bool(event.get("force")) if isinstance(event, dict) else False
        replace = event.get("replace_session_id") if isinstance(event, dict) else None
        try:
            summary: RefreshSummary = refresh_session(
                self.store,
                StripeApi(self._http, self._secret_key()),
                margin=self.config.refresh_margin,
                force=force,
                replace_session_id=replace if isinstance(replace, str) else None,
                timeout=self.config.request_timeout,
            )
        except (RefreshError, BotoCoreError, ClientError, GetParameterError) as error:
            metrics.add_metric("RefreshFailures", MetricUnit.Count, 1)
            reason = (
                str(error)
                if isinstance(error, RefreshError)
                else (f"an AWS call failed: {type(error).__name__}: {error}")
            )
            logger.error("session refresh failed", extra={"reason": reason})
            if isinstance(error, RefreshError):
                raise
            raise RefreshError(reason) from None
        metrics.add_metric("SessionsCreated", MetricUnit.Count, 1 if summary.refreshed else 0)
        metrics.add_metric("SessionSecondsLeft", MetricUnit.Seconds, summary.seconds_left)
        result = summary.to_dict()
        logger.info("session checked", extra=result)
        return result


@functools.cache
def refresher() -> Refresher:
    return Refresher.from_environment()
