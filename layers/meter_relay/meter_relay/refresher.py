"""The refresher: renews the meter event session in SSM before it expires.

Only this function and the operator tools read the secret key. A failure (Stripe, network,
the secret not set yet, a key or session not in the stack's StripeMode) raises with a message
that names no secret, after counting `RefreshFailures` (and `SessionModeMismatch`) metrics that
alarms watch; `SessionSecondsLeft` is counted either way, so a failing refresher is seen before
its session runs out.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import boto3
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.catalog import CatalogError, CatalogStore, read_meters
from meter_relay.config import AWS_CLIENT_CONFIG, RefresherConfig
from meter_relay.observability import logger, metrics
from meter_relay.secret_key import SECRET_PLACEHOLDER as SECRET_PLACEHOLDER  # re-exported
from meter_relay.secret_key import (
    KeyModeError,
    SecretKeyError,
    SecretUnreadable,
    read_secret_key,
)
from meter_relay.session import (
    KeyUnreadable,
    RefreshError,
    RefreshModeError,
    RefreshSummary,
    SessionFormatError,
    SessionStore,
    refresh_session,
)
from meter_relay.stripe_client import StripeApi, StripeHttp


class Refresher:
    """What lives across invocations: clients, the HTTP pool, the cached secret."""

    def __init__(
        self,
        config: RefresherConfig,
        store: SessionStore,
        secrets: SecretsProvider,
        catalog: CatalogStore | None = None,
    ):
        self.config = config
        self.store = store
        self.catalog = catalog
        self._secrets = secrets
        self._http = StripeHttp(config.api_base, config.api_version, pool_size=1)

    @classmethod
    def from_environment(cls) -> Refresher:
        config = RefresherConfig.from_env()
        session = boto3.session.Session()
        ssm = session.client("ssm", config=AWS_CLIENT_CONFIG)
        secretsmanager = session.client("secretsmanager", config=AWS_CLIENT_CONFIG)
        store = SessionStore(config.session_parameter, ssm)
        catalog = CatalogStore(config.catalog_path, ssm) if config.catalog_path else None
        return cls(config, store, SecretsProvider(boto3_client=secretsmanager), catalog)

    def _secret_key(self, *, fresh: bool = False) -> str:
        config = self.config
        try:
            return read_secret_key(
                self._secrets,
                config.secret_id,
                api_base=config.api_base,
                mode=config.mode,
                fresh=fresh,
            )
        except KeyModeError as error:
            raise RefreshModeError(str(error)) from None
        except SecretUnreadable as error:
            raise KeyUnreadable(str(error)) from None
        except SecretKeyError as error:
            raise RefreshError(str(error)) from None

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        """The session and the meter catalog; only the catalog when the forwarder asks for it
        ({"refresh_catalog": true}: an event_name it does not know), only the session when the
        forwarder waits for one ({"session_only": true}: the catalog's pages would make it
        wait longer, and can wait for the next scheduled run)."""
        options = event if isinstance(event, dict) else {}
        if options.get("refresh_catalog"):
            return {"catalog": self.refresh_catalog(strict=True)}
        result = self._refresh_session(options)
        if not options.get("session_only"):
            result["catalog"] = self.refresh_catalog(strict=False)
        return result

    def refresh_catalog(self, *, strict: bool) -> dict[str, Any]:
        """Read the account's meters and store the catalog if it changed. A failure never
        fails the session's run (`strict`: it does fail a run that asked for the catalog)."""
        if self.catalog is None:
            return {"enabled": False}
        try:
            catalog = read_meters(
                StripeApi(self._http, self._secret_key()), self.config.request_timeout
            )
            written = self.catalog.write(catalog)
        except (CatalogError, RefreshError, BotoCoreError, ClientError) as error:
            metrics.add_metric("MeterCatalogFailures", MetricUnit.Count, 1)
            reason = (
                str(error)
                if isinstance(error, CatalogError | RefreshError)
                else (f"an AWS call failed: {type(error).__name__}")
            )
            logger.error("meter catalog not refreshed", extra={"reason": reason})
            if strict:
                raise RefreshError(f"meter catalog not refreshed: {reason}") from None
            return {"enabled": True, "error": reason}
        metrics.add_metric("MeterCatalogMeters", MetricUnit.Count, len(catalog.meters))
        summary = {"enabled": True, "meters": len(catalog.meters), "written": written}
        logger.info("meter catalog checked", extra=summary)
        return summary

    def _refresh_session(self, event: dict[str, Any]) -> dict[str, Any]:
        force = bool(event.get("force"))
        replace = event.get("replace_session_id")
        try:
            summary: RefreshSummary = refresh_session(
                self.store,
                lambda fresh: self._secret_key(fresh=fresh),  # forced: a new key, perhaps
                lambda key: StripeApi(self._http, key),
                margin=self.config.refresh_margin,
                mode=self.config.mode,
                force=force,
                replace_session_id=replace if isinstance(replace, str) else None,
                timeout=self.config.request_timeout,
            )
        except (RefreshError, BotoCoreError, ClientError, GetParameterError) as error:
            # the next run reads the secret again: it may be mended
            self._secrets.clear_cache()  # type: ignore[no-untyped-call]
            metrics.add_metric("RefreshFailures", MetricUnit.Count, 1)
            if isinstance(error, RefreshModeError):
                metrics.add_metric("SessionModeMismatch", MetricUnit.Count, 1)
            reason = (
                str(error)
                if isinstance(error, RefreshError)
                else (f"an AWS call failed: {type(error).__name__}: {error}")
            )
            logger.error("session refresh failed", extra={"reason": reason})
            metrics.add_metric("SessionSecondsLeft", MetricUnit.Seconds, self._usable_seconds())
            if isinstance(error, RefreshError):
                raise
            raise RefreshError(reason) from None
        metrics.add_metric("SessionsCreated", MetricUnit.Count, 1 if summary.refreshed else 0)
        metrics.add_metric("SessionSecondsLeft", MetricUnit.Seconds, summary.seconds_left)
        result = summary.to_dict()
        logger.info("session checked", extra=result)
        return result

    def _usable_seconds(self) -> float:
        """What the forwarder has left to work with after a failed run (the alarm on
        SessionSecondsLeft sees a failing refresher's session run out)."""
        try:
            stored = self.store.read()
        except (SessionFormatError, GetParameterError, BotoCoreError, ClientError):
            return 0.0
        if stored is None or not stored.in_mode(self.config.mode):
            return 0.0
        return max(0.0, stored.seconds_left(time.time()))


@functools.cache
def refresher() -> Refresher:
    return Refresher.from_environment()
