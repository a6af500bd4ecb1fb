"""`meter-relay`: operators' tools for the dead-letter queue (list, replay, cancel).

Works against real AWS and the local stack alike: the standard AWS variables (and
`AWS_ENDPOINT_URL`), the STRIPE_* variables of DESIGN.md, or flags. The secret key is read from
Secrets Manager (`STRIPE_SECRET_ID` / `--secret-id`), never from a flag or the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import boto3
from aws_lambda_powertools.utilities.parameters import SecretsProvider

from meter_relay.config import (
    AWS_CLIENT_CONFIG,
    DEFAULT_API_BASE,
    DEFAULT_API_VERSION,
)
from meter_relay.dlq import (
    AuditLine,
    DeadLetterReader,
    DlqMessage,
    Filters,
    Fix,
    RateLimit,
    Replayer,
    RunSummary,
    cancel,
    positive_count,
    targets_from_dlq,
    targets_from_file,
)
from meter_relay.events import ValidationRules, parse_rfc3339
from meter_relay.secret_key import SecretKeyError, read_secret_key
from meter_relay.stripe_client import StripeApi, StripeHttp


class CliError(Exception):
    """A problem the operator can fix (a missing setting, a bad file): one clear line."""


# ----- output ----------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self._stream = stream or sys.stderr  # the stream of now, not of import time
        self._live = self._stream.isatty()

    def step(self, note: str = "") -> None:
        self.done += 1
        if self._live:
            width = 30
            filled = min(width, width * self.done // self.total)
            bar = "#" * filled + "." * (width - filled)
            self._stream.write(f"\r{self.label} [{bar}] {self.done}/~{self.total} {note[:30]:<30}")
            self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\n")


def table(title: str, rows: Iterable[tuple[str, Any]], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout  # the stream of now, not of import time
    rows = list(rows)
    stream.write(f"{title}\n")
    if not rows:
        stream.write("  (none)\n")
        return
    width = max(len(str(name)) for name, _ in rows)
    for name, value in rows:
        stream.write(f"  {name!s:<{width}}  {value:>8}\n")


def _age_bucket(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    if hours < 1:
        return "< 1 hour"
    if hours < 24:
        return "1-24 hours"
    if hours < 24 * 7:
        return "1-7 days"
    return "> 7 days"


# ----- settings --------------------------------------------------------------------------------
def _setting(args: argparse.Namespace, flag: str, env: str) -> str | None:
    value = getattr(args, flag, None) or os.environ.get(env, "").strip()
    return value or None


def _need(value: str | None, what: str) -> str:
    if not value:
        raise CliError(f"{what} is not set")
    return value


def _rules(args: argparse.Namespace) -> ValidationRules:
    try:
        return ValidationRules.from_settings(
            _setting(args, "meter_keys", "METER_KEYS") or "{}",
            os.environ.get("VALUE_RULE", "") or "positive_integer",
        )
    except ValueError as error:
        raise CliError(str(error)) from None


def _reader(args: argparse.Namespace) -> DeadLetterReader:
    url = _need(
        _setting(args, "dlq_url", "DEAD_LETTER_QUEUE_URL"),
        "the DLQ (--dlq-url or DEAD_LETTER_QUEUE_URL)",
    )
    return DeadLetterReader(boto3.client("sqs", config=AWS_CLIENT_CONFIG), url, _rules(args))


def _api(args: argparse.Namespace) -> StripeApi:
    """The secret key, from Secrets Manager only; it never appears in output."""
    secret_id = _need(
        _setting(args, "secret_id", "STRIPE_SECRET_ID"),
        "the Stripe secret (--secret-id or STRIPE_SECRET_ID)",
    )
    secrets = boto3.client("secretsmanager", config=AWS_CLIENT_CONFIG)
    base = _setting(args, "api_base", "STRIPE_API_BASE") or DEFAULT_API_BASE
    try:
        key = read_secret_key(SecretsProvider(boto3_client=secrets), secret_id, api_base=base)
    except SecretKeyError as error:
        raise CliError(str(error)) from None
    http = StripeHttp(
        base,
        _setting(args, "api_version", "STRIPE_API_VERSION") or DEFAULT_API_VERSION,
        pool_size=1,
    )
    return StripeApi(http, key)


def _filters(args: argparse.Namespace) -> Filters:
    def moment(text: str | None, flag: str) -> Any:
        if text is None:
            return None
        parsed = parse_rfc3339(text)
        if parsed is None:
            raise CliError(f"{flag} takes an RFC 3339 date-time such as 2026-11-21T00:00:00Z")
        return parsed

    return Filters(
        codes=set(args.code or []),
        event_names=set(args.event_names or []),
        customers=set(args.customer or []),
        since=moment(args.since, "--since"),
        until=moment(args.until, "--until"),
        max_count=args.max,
    )


# ----- commands --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    reader = _reader(args)
    filters = _filters(args)
    progress = Progress("reading", reader.depth())
    messages: list[DlqMessage] = []
    try:
        with closing(reader.scan()) as scan:  # listing consumes nothing: all given back
            for message in scan:
                messages.append(message)
                progress.step(message.code)
    finally:
        progress.close()
    chosen = [m for m in messages if filters.matches(m)][: args.max]
    if args.output:
        with open(args.output, "w") as out:
            for message in chosen:
                out.write(json.dumps(message.to_json()) + "\n")
    by_code = Counter(m.code for m in chosen)
    by_name = Counter(e.event_name or "(none)" for m in chosen for e in m.events)
    by_customer = Counter(e.customer or "(none)" for m in chosen for e in m.events)
    by_age = Counter(_age_bucket(m.age) for m in chosen)
    if args.json:
        print(
            json.dumps(
                {
                    "messages": len(chosen),
                    "events": sum(len(m.events) for m in chosen),
                    "by_code": by_code,
                    "by_event_name": by_name,
                    "by_customer": by_customer,
                    "by_age": by_age,
                }
            )
        )
        return 0
    table(
        f"{len(chosen)} messages, {sum(len(m.events) for m in chosen)} events, by error code",
        by_code.most_common(),
    )
    table("by event_name", by_name.most_common())
    table("by customer (top 20)", by_customer.most_common(20))
    table("by age (first seen)", sorted(by_age.items()))
    if args.output:
        print(f"exported {len(chosen)} messages to {args.output}")
    return 0


def _print_outcomes(summary: RunSummary, args: argparse.Namespace, verb: str) -> None:
    if args.json:
        print(
            json.dumps(
                {
                    "complete": summary.complete,
                    "counts": summary.counts(),
                    "outcomes": [o.to_json() for o in summary.outcomes],
                }
            )
        )
        return
    for outcome in summary.outcomes:
        for warning in outcome.warnings:
            events = ", ".join(outcome.identifiers)
            print(f"warning: {outcome.message_id} ({events}): {warning}", file=sys.stderr)
    if args.dry_run:  # what would happen to each message, one line each
        for outcome in summary.outcomes:
            print(f"{outcome.message_id}  {outcome.action:<12}  {outcome.detail}")
    table(f"{verb} ({'dry run' if args.dry_run else 'done'})", sorted(summary.counts().items()))
    whole = ("kept", "skipped")
    kept = Counter(o.code or "?" for o in summary.outcomes if o.action in whole)
    kept.update(e["code"] for o in summary.outcomes if o.action not in whole for e in o.kept_events)
    if kept:  # messages left whole, and events left of messages partly sent
        table("left in the DLQ, by reason", kept.most_common())
    if not summary.complete:
        print("stopped early (--max or time): run again to continue", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    reader = _reader(args)
    try:
        fix = Fix.from_file(args.fix) if args.fix else Fix()
    except ValueError as error:
        raise CliError(str(error)) from None
    replayer = Replayer(
        reader,
        reader.rules,
        usage_queue_url=_setting(args, "queue_url", "USAGE_QUEUE_URL"),
        api=_api(args) if args.via == "sync" else None,
        fix=fix,
        dry_run=args.dry_run,
        rate=RateLimit(args.rate),
    )
    if args.via == "queue":
        _need(replayer.usage_queue_url, "the usage queue (--queue-url or USAGE_QUEUE_URL)")
    progress = Progress("replaying", reader.depth())
    try:
        summary = replayer.replay(
            _filters(args), args.via, progress=lambda o: progress.step(o.action)
        )
    finally:
        progress.close()
    _print_outcomes(summary, args, "replay")
    return 1 if summary.failed else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    scanned_all = True
    if args.identifiers:
        if len(args.event_names or []) != 1:
            raise CliError("--identifiers needs exactly one --event-name")
        try:
            targets = targets_from_file(args.identifiers, args.event_names[0])
        except OSError as error:
            raise CliError(f"cannot read {args.identifiers}: {error}") from None
    else:
        skip = _skipped(args.skip) if args.skip else []
        targets, scanned_all = targets_from_dlq(_reader(args), _filters(args), skip=skip)
    api = None if args.dry_run else _api(args)
    progress = Progress("cancelling", len(targets))
    audit_file = open(args.audit, "a") if args.audit else None  # noqa: SIM115 (closed below)

    def record(line: AuditLine) -> None:
        progress.step(line.status)
        if audit_file:
            audit_file.write(json.dumps(line.to_json()) + "\n")
            audit_file.flush()

    try:
        audit, complete = cancel(
            api, targets, dry_run=args.dry_run, rate=RateLimit(args.rate), progress=record
        )
    finally:
        progress.close()
        if audit_file:
            audit_file.close()
    statuses = Counter(line.status for line in audit)
    complete = complete and scanned_all
    if args.json:
        print(
            json.dumps(
                {
                    "complete": complete,
                    "counts": statuses,
                    "audit": [line.to_json() for line in audit],
                }
            )
        )
    else:
        for line in audit:
            print(json.dumps(line.to_json()))
        table(f"cancel ({'dry run' if args.dry_run else 'done'})", sorted(statuses.items()))
    if not complete:
        print(
            "stopped early (--max): more messages match; run again with --skip AUDIT_FILE "
            "(the --audit file of this run) so that nothing is cancelled twice",
            file=sys.stderr,
        )
    bad = {"refused", "failed", "past_cancel_window"}
    return 1 if any(line.status in bad for line in audit) else 0


def _skipped(path: str) -> list[str]:
    """Identifiers handled already: one a line, or the JSON lines of an --audit file."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        return [str(json.loads(x)["identifier"]) if x.startswith("{") else x for x in lines]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CliError(f"cannot read the identifiers to skip from {path}: {error}") from None


def _count(text: str) -> int:
    try:
        return positive_count(text, "--max")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}") from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


# ----- parser ----------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dlq-url", help="the dead-letter queue (default: DEAD_LETTER_QUEUE_URL)")
    parser.add_argument("--meter-keys", help="METER_KEYS JSON: payload keys per event_name")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (repeat a flag to allow several values)")
    group.add_argument("--code", action="append", help="error code, e.g. payload_invalid_value")
    group.add_argument(
        "--event-name",
        dest="event_names",
        action="append",
        help="event_name (with cancel --identifiers: the identifiers' event_name)",
    )
    group.add_argument("--customer", action="append", help="customer id in the payload")
    group.add_argument("--since", help="first seen at or after (RFC 3339)")
    group.add_argument("--until", help="first seen at or before (RFC 3339)")
    group.add_argument("--max", type=_count, help="at most this many messages (1 or more)")


def _add_stripe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-id", help="Secrets Manager secret with the key (STRIPE_SECRET_ID)"
    )
    parser.add_argument("--api-base", help="Stripe API base (STRIPE_API_BASE)")
    parser.add_argument("--api-version", help="Stripe-Version header (STRIPE_API_VERSION)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meter-relay", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="area", required=True)
    dlq = commands.add_parser("dlq", help="dead-letter queue operations")
    actions = dlq.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="summarise the DLQ without consuming it")
    _add_common(listing)
    _add_filters(listing)
    listing.add_argument("--output", metavar="FILE.jsonl", help="export every message")
    listing.set_defaults(run=cmd_list)

    replay = actions.add_parser("replay", help="send dead-lettered events again")
    _add_common(replay)
    _add_filters(replay)
    _add_stripe(replay)
    replay.add_argument(
        "--via",
        choices=["queue", "sync"],
        default="queue",
        help="back to the usage queue (default) or /v2/billing/meter_events",
    )
    replay.add_argument("--queue-url", help="the usage queue (default: USAGE_QUEUE_URL)")
    replay.add_argument("--fix", metavar="FILE", help="corrections to apply (JSON, see README)")
    replay.add_argument("--dry-run", action="store_true", help="show what would happen")
    replay.add_argument("--rate", type=_positive, help="at most this many messages per second")
    replay.set_defaults(run=cmd_replay)

    cancel_cmd = actions.add_parser("cancel", help="cancel delivered events (24-hour window)")
    _add_common(cancel_cmd)
    _add_filters(cancel_cmd)
    _add_stripe(cancel_cmd)
    cancel_cmd.add_argument("--identifiers", metavar="FILE", help="one identifier per line")
    cancel_cmd.add_argument("--dry-run", action="store_true", help="show what would happen")
    cancel_cmd.add_argument("--rate", type=_positive, help="at most this many cancels per second")
    cancel_cmd.add_argument("--audit", metavar="FILE", help="append the audit lines (JSON) here")
    cancel_cmd.add_argument(
        "--skip",
        metavar="FILE",
        help="identifiers handled already, one a line or an --audit file (to continue a run)",
    )
    cancel_cmd.set_defaults(run=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except CliError as error:
        print(f"meter-relay: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("meter-relay: interrupted; nothing left hidden in the DLQ", file=sys.stderr)
        return 130
