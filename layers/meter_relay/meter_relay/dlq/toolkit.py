"""The operator tools' clients, made from one ToolsConfig and one boto3 session (the CLI's,
from --profile/--region; the Lambda function's own), alike for the CLI and the DLQ functions."""

from __future__ import annotations

from functools import cached_property, partial
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider

from meter_relay.catalog import CatalogStore, with_catalog_keys
from meter_relay.config import AWS_CLIENT_CONFIG, ConfigError, ToolsConfig
from meter_relay.dlq.replay import SYNC_SENDERS, QueueResend, SyncResend
from meter_relay.dlq.resend import UsageQueue
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.events import ValidationRules
from meter_relay.ledger_engines import AthenaEngine, DuckDbEngine, Engine
from meter_relay.ledger_queries import LedgerQueries
from meter_relay.ledger_store import LedgerBucket, record_sync_deliveries
from meter_relay.secret_key import read_secret_key
from meter_relay.stripe_client import StripeApi, StripeHttp

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

ENGINES = ("athena", "duckdb")


class Toolkit:
    """Clients made when first asked for: a command reads only the settings it needs."""

    def __init__(self, config: ToolsConfig, session: boto3.session.Session | None = None) -> None:
        self.config = config
        self.session = session or boto3.session.Session()

    @cached_property
    def sqs(self) -> SQSClient:
        return self.session.client("sqs", config=AWS_CLIENT_CONFIG)

    @cached_property
    def s3(self) -> S3Client:
        return self.session.client("s3", config=AWS_CLIENT_CONFIG)

    @cached_property
    def ssm(self) -> SSMClient:
        return self.session.client("ssm", config=AWS_CLIENT_CONFIG)

    @cached_property
    def rules(self) -> ValidationRules:
        """Letters are judged by each meter's own payload keys (the stack's meter catalog),
        METER_KEYS over them, as the forwarder judges events."""
        path = self.config.catalog_path
        return with_catalog_keys(self.config.rules, CatalogStore(path, self.ssm) if path else None)

    def ledger(self) -> LedgerBucket | None:
        """The delivery ledger's bucket, when the stack has one."""
        bucket = self.config.ledger_bucket
        return LedgerBucket(bucket, self.config.ledger_prefix, self.s3) if bucket else None

    def default_engine(self) -> str:
        """Athena where the stack has its workgroup and database, else DuckDB."""
        config = self.config
        return "athena" if config.ledger_workgroup and config.ledger_database else "duckdb"

    def ledger_engine(
        self, choice: str | None = None, remaining: Callable[[], float] | None = None
    ) -> Engine:
        """The engine that queries the ledger: `choice`, else the default; a ConfigError
        when what it needs is not known. `remaining`: a function's time left, which bounds
        an Athena query's wait."""
        choice = choice or self.default_engine()
        ledger = self.ledger()
        if ledger is None:
            raise ConfigError("LEDGER_BUCKET is not set (the stack has no delivery ledger?)")
        if choice == "duckdb":
            return DuckDbEngine(ledger)
        workgroup, database = self.config.ledger_workgroup, self.config.ledger_database
        if not (workgroup and database):
            raise ConfigError(
                "Athena needs the stack's workgroup and database (LEDGER_WORKGROUP, "
                "LEDGER_DATABASE): give --stack-name of a stack with the ledger, or use "
                "--engine duckdb"
            )
        athena = self.session.client("athena", config=AWS_CLIENT_CONFIG)
        return AthenaEngine(athena, workgroup, database, remaining=remaining)

    def delivered_lookup(
        self, choice: str | None = None, remaining: Callable[[], float] | None = None
    ) -> LedgerQueries | None:
        """What replays consult (None: no ledger, nothing to consult)."""
        if not self.config.ledger_bucket:
            return None
        return LedgerQueries(self.ledger_engine(choice, remaining))

    def reader(self) -> DeadLetterReader:
        return DeadLetterReader(self.sqs, self.config.need("DEAD_LETTER_QUEUE_URL"), self.rules)

    def usage_queue(self) -> UsageQueue:
        return UsageQueue(self.sqs, self.config.need("USAGE_QUEUE_URL"))

    def queue_resend(self) -> QueueResend:
        return QueueResend(self.usage_queue())

    def sync_resend(self) -> SyncResend:
        """Through Stripe's synchronous endpoint, what Stripe counts recorded in the delivery
        ledger when the stack has one."""
        ledger = self.ledger()
        record = partial(record_sync_deliveries, ledger, self.rules) if ledger else None
        return SyncResend(self.stripe_api(pool_size=SYNC_SENDERS), record=record)

    def stripe_api(self, pool_size: int = 1) -> StripeApi:
        """The secret key, from Secrets Manager only (never logged, never in output); a key of
        the other StripeMode, or a live key for a base that is not Stripe's, is refused."""
        secret_id = self.config.need("STRIPE_SECRET_ID")
        secrets = self.session.client("secretsmanager", config=AWS_CLIENT_CONFIG)
        key = read_secret_key(
            SecretsProvider(boto3_client=secrets),
            secret_id,
            api_base=self.config.api_base,
            mode=self.config.mode,
        )
        http = StripeHttp(self.config.api_base, self.config.api_version, pool_size=pool_size)
        return StripeApi(http, key)
