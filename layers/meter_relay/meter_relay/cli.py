"""`meter-relay`: operators' tools for the dead-letter queue, as AWS tools behave.

    meter-relay --stack-name S dlq list|show|redrive|replay|cancel|discard [options]
    meter-relay --stack-name S errors pull --since T [--until T]
    meter-relay --stack-name S trace IDENTIFIER... | reconcile --event-name N --since T

`--stack-name` finds every queue, secret and setting in the stack's outputs; `--profile` and
`--region` choose the AWS credentials and region as the AWS CLI does (the standard AWS
variables, AWS_ENDPOINT_URL included, work too). Without a stack, the variables of the tools'
configuration (DEAD_LETTER_QUEUE_URL, USAGE_QUEUE_URL, STRIPE_SECRET_ID, STRIPE_API_BASE,
STRIPE_API_VERSION, STRIPE_MODE, METER_KEYS, VALUE_RULE, METER_CATALOG_PATH,
ERROR_REPORTS_TABLE, LEDGER_BUCKET, LEDGER_WORKGROUP, LEDGER_DATABASE) or the matching
flags. The Stripe secret key is read from Secrets Manager only, never from a flag or the
environment.

Exit status: 0 done; 1 something stayed in the DLQ, failed, or was not seen; 2 usage or
configuration (also: not confirmed); 3 AWS or Stripe could not be reached; 4 an internal
error; 130 interrupted.
Errors are one line on stderr naming what to fix (--debug shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from meter_relay import __version__
from meter_relay.config import AWS_CLIENT_CONFIG, ConfigError, ToolsConfig
from meter_relay.console import NotConfirmed
from meter_relay.dlq.toolkit import Toolkit
from meter_relay.ledger_store import LedgerUnavailable
from meter_relay.secret_key import SecretKeyError
from meter_relay.stack import describe_stack


class Exit(IntEnum):
    DONE = 0
    STAYED = 1  # something stayed in the DLQ, failed, or was not seen
    USAGE = 2  # usage or configuration; also: not confirmed
    UNREACHABLE = 3  # AWS or Stripe could not be reached
    INTERNAL = 4  # a defect of meter-relay's own: never a finding (1) a script acts on
    INTERRUPTED = 130


def stripe_exit(status: int) -> Exit:
    """A Stripe call's failure as an exit status: no answer, 429 or 5xx after the retries is
    Stripe out of reach; any other refusal (a revoked or wrong key, 401/403; a bad request) is
    the setup's."""
    return Exit.UNREACHABLE if status in (0, 429) or status >= 500 else Exit.USAGE


class CliError(Exception):
    """A problem the operator can fix (a missing setting, a bad file): one clear line."""

    def __init__(self, message: str, status: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.status = status


# flag -> the ToolsConfig variable it sets
FLAG_VARIABLES = {
    "dlq_url": "DEAD_LETTER_QUEUE_URL",
    "queue_url": "USAGE_QUEUE_URL",
    "secret_id": "STRIPE_SECRET_ID",
    "api_base": "STRIPE_API_BASE",
    "api_version": "STRIPE_API_VERSION",
    "stripe_mode": "STRIPE_MODE",
    "meter_keys": "METER_KEYS",
    "value_rule": "VALUE_RULE",
    "ledger_bucket": "LEDGER_BUCKET",
    "workgroup": "LEDGER_WORKGROUP",
    "database": "LEDGER_DATABASE",
    "table_name": "ERROR_REPORTS_TABLE",
}
_NEEDED = {
    "DEAD_LETTER_QUEUE_URL": ("the DLQ", "--dlq-url"),
    "USAGE_QUEUE_URL": ("the usage queue", "--queue-url"),
    "STRIPE_SECRET_ID": ("the Stripe secret", "--secret-id"),
    "ERROR_REPORTS_TABLE": ("the error reports table", "--table-name"),
}


# ----- settings --------------------------------------------------------------------------------
def toolkit(args: argparse.Namespace) -> Toolkit:
    """The tools' clients: one boto3 session (--profile, --region), the stack's outputs
    (--stack-name) over the environment, and the flags over both."""
    try:
        # the region as the AWS CLI takes it: --region, then AWS_REGION, then botocore's own
        # (AWS_DEFAULT_REGION, the profile)
        region = args.region or os.environ.get("AWS_REGION", "").strip() or None
        session = boto3.session.Session(profile_name=args.profile, region_name=region)
    except ProfileNotFound as error:
        raise CliError(f"{error} (see `aws configure list-profiles`)") from None
    overrides: dict[str, str | None] = {}
    if args.stack_name:
        cloudformation = session.client("cloudformation", config=AWS_CLIENT_CONFIG)
        overrides.update(describe_stack(cloudformation, args.stack_name).settings)
    given = {var: getattr(args, flag, None) for flag, var in FLAG_VARIABLES.items()}
    overrides.update({var: value for var, value in given.items() if value})
    return Toolkit(ToolsConfig.from_env(os.environ, overrides), session)


def need(kit: Toolkit, *variables: str) -> None:
    """Every setting a command cannot do without is known, else one line saying how to give it."""
    for variable in variables:
        try:
            kit.config.need(variable)
        except ConfigError:
            what, flag = _NEEDED[variable]
            raise CliError(
                f"{what} is not known: give --stack-name, or {flag} (or {variable})"
            ) from None


# ----- errors ----------------------------------------------------------------------------------
_DENIED = ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException")
_BAD_CREDENTIALS = ("InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException")
_NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def aws_failure(error: BotoCoreError | ClientError) -> CliError:
    """An AWS error as one line naming what to fix, with its exit status."""
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return CliError(
            "no AWS credentials: give --profile, or set AWS_PROFILE or AWS_ACCESS_KEY_ID"
        )
    if isinstance(error, NoRegionError):
        return CliError("no AWS region: give --region, or set AWS_REGION or AWS_DEFAULT_REGION")
    if isinstance(error, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
        return CliError(f"cannot reach AWS: {error}", Exit.UNREACHABLE)
    if isinstance(error, ReadTimeoutError):
        return CliError(f"AWS did not answer in time: {error}", Exit.UNREACHABLE)
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code, message = details.get("Code", ""), details.get("Message", "")
        said = f"{error.operation_name}: {code}: {message}".rstrip(": ")
        if code in _DENIED or code.endswith(".AccessDenied"):
            return CliError(f"AWS refused {said} (check --profile and the role's permissions)")
        if code in _BAD_CREDENTIALS:
            return CliError(f"AWS refused the credentials: {said} (check --profile)")
        if code in _NO_QUEUE:
            return CliError(
                f"the queue does not exist: {said} (check --stack-name or the queue URLs, "
                "and --region)"
            )
        return CliError(f"AWS failed: {said}", Exit.UNREACHABLE)
    return CliError(f"AWS failed: {type(error).__name__}: {error}", Exit.UNREACHABLE)


# ----- the parser ------------------------------------------------------------------------------
def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The AWS-style options, accepted before the command and after it alike."""
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = None if top else argparse.SUPPRESS
    group = parent.add_argument_group("global options")
    group.add_argument(
        "--stack-name", default=default, help="the Meter Relay stack: its outputs name it all"
    )
    group.add_argument("--profile", default=default, help="the AWS profile (as the AWS CLI)")
    group.add_argument("--region", default=default, help="the AWS region (as the AWS CLI)")
    group.add_argument(
        "--output",
        choices=["table", "json"],
        default="table" if top else argparse.SUPPRESS,
        help="table for people (default), json for programs (one document on stdout)",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    from meter_relay import cli_dlq, errors_cli, ledger_cli  # they import this module's helpers

    parser = argparse.ArgumentParser(
        prog="meter-relay",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "exit status: 0 done; 1 something stayed, failed, or was not seen; 2 usage or "
            "configuration (also: not confirmed); 3 AWS or Stripe unreachable; 4 an internal "
            "error; 130 interrupted"
        ),
        parents=[_global_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"meter-relay {__version__}")
    areas = parser.add_subparsers(dest="area", required=True)
    dlq = areas.add_parser("dlq", help="dead-letter queue operations")
    cli_dlq.add_commands(dlq, _global_options(top=False))
    errors_cli.register(areas, _global_options(top=False))
    ledger_cli.register(areas, _global_options(top=False))
    return parser


# ----- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return int(command(args))
    except KeyboardInterrupt:
        print("meter-relay: interrupted; nothing left hidden in the DLQ", file=sys.stderr)
        return Exit.INTERRUPTED
    except Exception as error:  # one line, never a traceback (but with --debug)
        if args.debug:
            raise
        failure = _failure(error)
        print(f"meter-relay: {failure}", file=sys.stderr)
        return int(failure.status)


def _failure(error: Exception) -> CliError:
    if isinstance(error, CliError):
        return error
    if isinstance(error, ConfigError | SecretKeyError | NotConfirmed):
        return CliError(str(error))
    if isinstance(error, BotoCoreError | ClientError):
        return aws_failure(error)
    if isinstance(error, LedgerUnavailable):  # AWS's own words when it was AWS
        cause = error.__cause__
        if isinstance(cause, BotoCoreError | ClientError):
            return aws_failure(cause)
        return CliError(f"the delivery ledger: {error}", Exit.UNREACHABLE)
    if isinstance(error, OSError):
        return CliError(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
    return CliError(
        f"internal error: {type(error).__name__}: {error} (run again with --debug and report it)",
        Exit.INTERNAL,
    )
