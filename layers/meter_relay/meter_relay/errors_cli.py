"""`meter-relay errors pull --since T [--until T]`: Stripe's error reports, read from Stripe.

For an account without an event destination (no EventBridge rule, no webhook), and to redo
what the function could not (the events in the stack's undelivered queue): every error report
Stripe created in [since, until) is read from `GET /v2/core/events` (Stripe keeps events 30
days) and processed exactly as ErrorReportsFunction processes it, into the same dead-letter
queue, remembered in the same table: an event processed before, by either, writes nothing.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyPersistenceLayerError,
)
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay import console
from meter_relay.cli import CliError, Exit, aws_failure, need, stripe_exit, toolkit
from meter_relay.cli_dlq import _add_settings
from meter_relay.config import AWS_CLIENT_CONFIG
from meter_relay.dead_letter import DeadLetterQueue
from meter_relay.dlq.toolkit import Toolkit
from meter_relay.error_reports import (
    DUPLICATE,
    PROCESSED,
    UNAVAILABLE,
    FetchFailed,
    LettersNotSent,
    PullSummary,
    ReportProcessor,
    StripeEvents,
    pull,
)
from meter_relay.events import parse_rfc3339
from meter_relay.ledger_store import LedgerBodies

TABLE_OUTPUT = "ErrorReportsTableName"
REQUEST_TIMEOUT = 30.0


def register(
    areas: argparse._SubParsersAction[argparse.ArgumentParser],
    global_options: argparse.ArgumentParser,
) -> None:
    """The `errors` area and its commands, on the CLI's parser."""
    errors = areas.add_parser("errors", help="Stripe's error reports (events it dropped later)")
    actions = errors.add_subparsers(dest="action", required=True)
    pull_cmd = actions.add_parser(
        "pull",
        help="read Stripe's error reports since a time and dead-letter them (nothing twice)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        parents=[global_options],
    )
    pull_cmd.add_argument(
        "--since", required=True, help="created at or after (RFC 3339; Stripe keeps 30 days)"
    )
    pull_cmd.add_argument("--until", help="created before (RFC 3339; default: now)")
    _add_settings(pull_cmd, stripe=True)  # the DLQ and Stripe flags, as the dlq commands take them
    pull_cmd.add_argument("--table-name", help="what was processed before (ERROR_REPORTS_TABLE)")
    pull_cmd.set_defaults(run=cmd_pull)


def _moment(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    moment = parse_rfc3339(text)
    if moment is None:
        raise CliError(f"{flag} takes an RFC 3339 date-time such as 2026-11-21T00:00:00Z")
    return moment


def _need_table(args: argparse.Namespace, kit: Toolkit) -> str:
    """The table of processed reports: --table-name, the stack's output or ERROR_REPORTS_TABLE."""
    if args.stack_name and not kit.config.error_reports_table:
        raise CliError(
            f"the stack {args.stack_name!r} has no output {TABLE_OUTPUT}: deployed from an "
            "older template (sam deploy it again), or give --table-name"
        )
    need(kit, "ERROR_REPORTS_TABLE")
    return kit.config.need("ERROR_REPORTS_TABLE")


def cmd_pull(args: argparse.Namespace) -> int:
    since = _moment(args.since, "--since")
    until = _moment(args.until, "--until")
    assert since is not None  # required by the parser
    kit = toolkit(args)
    need(kit, "DEAD_LETTER_QUEUE_URL", "STRIPE_SECRET_ID")
    table = _need_table(args, kit)
    api = kit.stripe_api()  # the key is read and checked (StripeMode) before anything else
    events = StripeEvents(lambda: api, REQUEST_TIMEOUT)
    ledger = kit.ledger()  # bodies of reported events read from it, the samples recorded in it
    processor = ReportProcessor(
        events,
        DeadLetterQueue(kit.config.need("DEAD_LETTER_QUEUE_URL"), kit.sqs),
        DynamoDBPersistenceLayer(
            table_name=table, boto3_session=kit.session, boto_config=AWS_CLIENT_CONFIG
        ),
        LedgerBodies(ledger) if ledger else None,
        ledger=ledger,
    )
    try:
        summary = pull(events, processor, since, until)
    except FetchFailed as error:
        raise CliError(
            f"Stripe: {error}; what was pulled before it is kept (run the same pull again)",
            stripe_exit(error.status),
        ) from None
    except LettersNotSent as error:
        raise CliError(
            f"{error}: run the same pull again (it sends that report's letters again: those "
            "SQS took may be in the DLQ twice, with the same Identifier and StripeEventId)",
            Exit.UNREACHABLE,
        ) from None
    except IdempotencyPersistenceLayerError as error:
        raise _table_failure(error, table) from None
    return _report(args, summary)


def _table_failure(error: IdempotencyPersistenceLayerError, table: str) -> CliError:
    cause = error.__cause__
    if isinstance(cause, ClientError):
        if cause.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return CliError(f"the table {table} does not exist (check --stack-name, --region)")
        return aws_failure(cause)
    if isinstance(cause, BotoCoreError):
        return aws_failure(cause)
    return CliError(f"the table {table} failed: {error}", Exit.UNREACHABLE)


def _report(args: argparse.Namespace, summary: PullSummary) -> int:
    statuses = Counter(o.status for o in summary.outcomes)
    processed = [o for o in summary.outcomes if o.status == PROCESSED]
    by_code: Counter[str] = Counter()
    for outcome in processed:
        by_code.update(outcome.counts)
    mismatched = [o.event_id for o in processed if not o.counts_match]
    letters = sum(o.letters for o in processed)
    if args.output == "json":
        console.document(
            {
                "events": len(summary.outcomes) + len(summary.busy),
                "processed": statuses[PROCESSED],
                "duplicates": statuses[DUPLICATE],
                "unavailable": statuses[UNAVAILABLE],
                "busy": summary.busy,
                "incomplete": summary.incomplete,
                "letters": letters,
                "rejected": sum(o.rejected for o in processed),
                "rejected_by_code": by_code,
                "count_mismatches": mismatched,
                "outcomes": [o.to_json() for o in summary.outcomes],
            }
        )
    else:
        console.table(
            f"{len(summary.outcomes) + len(summary.busy)} error reports from Stripe",
            [
                ("processed now", statuses[PROCESSED]),
                ("processed before (nothing written)", statuses[DUPLICATE]),
                ("unavailable from Stripe", statuses[UNAVAILABLE]),
                ("held by another run", len(summary.busy)),
            ],
        )
        console.table("events Stripe rejected, by code (its counts)", by_code.most_common())
        console.line(f"{letters} letters written to the DLQ (one per sample error)")
    for event_id in mismatched:
        console.warn(f"warning: {event_id}: the counts per code do not add up to error_count")
    unrecorded = sum(o.unrecorded for o in processed)
    if unrecorded:
        console.warn(
            f"warning: {unrecorded} reported events are not recorded in the delivery ledger "
            "(its write failed): trace and reconcile do not know Stripe rejected them"
        )
    if summary.busy:
        console.warn(
            f"{len(summary.busy)} reports were being processed by another run: pull again later"
        )
    if summary.incomplete:
        console.warn(
            f"{len(summary.incomplete)} reports came from Stripe without their data, not "
            f"processed: pull again later ({', '.join(summary.incomplete)})"
        )
    # exit 1 as documented: something stayed (busy, incomplete, unrecorded) or does not add up
    stayed = summary.busy or summary.incomplete or mismatched or unrecorded
    return Exit.STAYED if stayed else Exit.DONE
