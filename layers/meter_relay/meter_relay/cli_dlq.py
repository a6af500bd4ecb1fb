"""The `meter-relay dlq` commands: list, show, redrive, replay, cancel and discard.

Read-only commands (list, show, cancel's choosing) give every message back; the others delete
a message only once what it carries is safely elsewhere. What bills (replay --via sync),
cancels or deletes (discard) is shown first and asked on a terminal (--yes skips the
question); away from a terminal it is refused without --yes.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections import Counter
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

from meter_relay import console
from meter_relay.cli import CliError, Exit, need, toolkit
from meter_relay.console import Progress, table
from meter_relay.dlq.cancel import (
    AuditLine,
    AuditStatus,
    CancelTarget,
    cancel,
    record,
    targets_from_dlq,
    targets_from_file,
)
from meter_relay.dlq.discard import Discarder
from meter_relay.dlq.reading import DlqMessage
from meter_relay.dlq.redrive import Redriver
from meter_relay.dlq.replay import QueueResend, Replayer, Resend
from meter_relay.dlq.runs import RunSummary
from meter_relay.dlq.selection import Filters, Fix, Reasons, positive_count
from meter_relay.dlq.toolkit import ENGINES
from meter_relay.events import parse_rfc3339
from meter_relay.ledger_store import LedgerBucket
from meter_relay.retry import RateLimit

DLQ, USAGE, SECRET = "DEAD_LETTER_QUEUE_URL", "USAGE_QUEUE_URL", "STRIPE_SECRET_ID"
SHOWN = 20  # rows of a preview or a "top" table


# ----- options ---------------------------------------------------------------------------------
def _filters(args: argparse.Namespace, reasons: Reasons = Reasons.ANY) -> Filters:
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
        reasons=reasons,
    )


def _count(text: str) -> int:
    try:
        return positive_count(text, "--max")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _json(args: argparse.Namespace) -> bool:
    return bool(args.output == "json")


# ----- list ------------------------------------------------------------------------------------
def _age_bucket(age: timedelta) -> str:
    hours = age.total_seconds() / 3600
    if hours < 1:
        return "< 1 hour"
    if hours < 24:
        return "1-24 hours"
    if hours < 24 * 7:
        return "1-7 days"
    return "> 7 days"


def cmd_list(args: argparse.Namespace) -> int:
    kit = toolkit(args)
    need(kit, DLQ)
    reader = kit.reader()
    filters = _filters(args)
    progress = Progress("reading", reader.depth())
    messages, events, stopped = 0, 0, False
    by_code: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    by_customer: Counter[str] = Counter()
    by_age: Counter[str] = Counter()
    export = open(args.export, "w") if args.export else None  # noqa: SIM115 (closed below)
    try:
        with closing(reader.scan()) as scan:  # listing consumes nothing: all given back
            for message in scan:
                progress.step(message.code)
                if not filters.matches(message):
                    continue
                if filters.max_count is not None and messages >= filters.max_count:
                    stopped = True
                    break
                chosen = filters.chosen_events(message)
                messages, events = messages + 1, events + len(chosen)
                by_code[message.code] += 1
                by_name.update(e.event_name or "(none)" for e in chosen)
                by_customer.update(e.customer or "(none)" for e in chosen)
                by_age[_age_bucket(message.age)] += 1
                if export:
                    export.write(json.dumps(message.to_json()) + "\n")
    finally:
        progress.close()
        if export:
            export.close()
    stats = reader.stats
    shortfall = None if stopped else stats.shortfall(reader.max_held)
    if _json(args):
        console.document(
            {
                "messages": messages,
                "events": events,
                "by_code": by_code,
                "by_event_name": by_name,
                "by_customer": by_customer,
                "by_age": by_age,
                "complete": shortfall is None,
                "stopped": "max" if stopped else None,
                "scan": stats.to_json(),
                "shortfall": shortfall,
            }
        )
    else:
        table(f"{messages} messages, {events} events, by error code", by_code.most_common())
        table("by event_name", by_name.most_common())
        table(f"by customer (top {SHOWN})", by_customer.most_common(SHOWN))
        table("by age (first seen)", sorted(by_age.items()))
        console.line(f"read {stats.seen} of ~{stats.depth} messages in the DLQ")
        if args.export:
            console.line(f"exported {messages} messages to {args.export}")
    if stopped:
        console.warn(f"stopped at --max {filters.max_count}: more messages match")
    if shortfall:
        console.warn(f"warning: {shortfall}: the counts above are of what was seen")
        return Exit.STAYED
    return Exit.DONE


# ----- show ------------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace) -> int:
    kit = toolkit(args)
    need(kit, DLQ)
    reader = kit.reader()
    found: list[DlqMessage] = []
    with closing(reader.scan()) as scan:
        for message in scan:
            if args.id in (message.message_id, message.source_message_id):
                found.append(message)
                if message.message_id == args.id:
                    break
    if _json(args):
        console.document({"messages": [_shown(m) for m in found]})
    for message in [] if _json(args) else found:
        _print_message(message)
    if not found:
        seen = f"{reader.stats.seen} of ~{reader.stats.depth} messages read"
        console.warn(f"no message {args.id!r} (nor letters of it) in the DLQ ({seen})")
        return Exit.STAYED
    return Exit.DONE


def _shown(message: DlqMessage) -> dict[str, Any]:
    shown = message.to_json()
    shown["events"] = [
        {
            "index": e.index,
            "identifier": e.identifier,
            "event_name": e.event_name,
            "customer": e.customer,
            "valid_now": e.parsed.rejection is None,
        }
        for e in message.events
    ]
    return shown


def _print_message(message: DlqMessage) -> None:
    rows = [
        ("message", message.message_id),
        ("code", message.code),
        ("reason", message.error_message),
        ("source message", message.source_message_id),
        ("first seen", message.first_seen.isoformat()),
        ("sent to SQS", message.sent_at.isoformat()),
        ("kind", "moved by SQS (maxReceiveCount)" if message.redriven else "a letter"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        console.line(f"{name:<{width}}  {value}")
    console.line(f"events ({len(message.events)})")
    for event in message.events:
        console.line(
            f"  {event.index:>3}  {event.identifier or '(none)'}  {event.event_name or '(none)'}"
            f"  {event.customer or '(none)'}"
        )
    console.line("message attributes")
    for name, value in sorted(message.attributes.items()):
        console.line(f"  {name}: {value}")
    console.line("SQS attributes")
    for name, value in sorted(message.sqs_attributes.items()):
        console.line(f"  {name}: {value}")
    console.line("body")
    try:
        body = json.dumps(json.loads(message.body), indent=2)
    except (ValueError, RecursionError):
        body = message.body
    for text in body.splitlines():
        console.line(f"  {text}")
    console.line()


# ----- redrive, replay, discard: the report of a consuming pass --------------------------------
def _report_run(summary: RunSummary, args: argparse.Namespace, verb: str) -> int:
    if _json(args):
        console.document(summary.to_json())
    else:
        for outcome in summary.outcomes:
            for warning in outcome.warnings:
                events = ", ".join(outcome.identifiers)
                console.warn(f"warning: {outcome.message_id} ({events}): {warning}")
        if args.dry_run:  # what would happen to each message, one line each
            for outcome in summary.outcomes:
                console.line(f"{outcome.message_id}  {outcome.action:<16}  {outcome.detail}")
        table(f"{verb} ({'dry run' if args.dry_run else 'done'})", sorted(summary.counts().items()))
        delivered = sum(len(o.already_delivered) for o in summary.outcomes)
        if delivered:
            console.line(
                f"{delivered} events are in the delivery ledger (Stripe has them): not sent "
                "again, their letters settled"
                + (" (dry run: nothing deleted)" if args.dry_run else "")
            )
        stayed = summary.stayed()
        if stayed:  # messages left whole, and events left of messages partly done
            table("left in the DLQ, by reason", stayed.most_common())
        if summary.not_selected:
            table("not chosen (left in the DLQ), by reason", summary.not_selected.most_common())
        console.line(f"read {summary.scan.seen} of ~{summary.scan.depth} messages in the DLQ")
    if summary.stopped:
        console.warn(f"stopped early ({summary.stopped.value}): run again to continue")
    shortfall = summary.scan.shortfall(summary.max_held)
    if shortfall:
        console.warn(f"warning: {shortfall}: run again to take the rest")
    if summary.unreachable:
        return Exit.UNREACHABLE
    return Exit.STAYED if summary.failed or not summary.complete else Exit.DONE


def _preview(summary: RunSummary, what: str) -> list[str]:
    """What a dry run says a run would do, for the question before it."""
    identifiers = [i for o in summary.outcomes for i in o.identifiers]
    lines = [f"{len(identifiers)} events of {len(summary.outcomes)} messages {what}"]
    lines += [f"  {o.message_id}  {o.detail}" for o in summary.outcomes[:SHOWN]]
    if len(summary.outcomes) > SHOWN:
        lines.append(f"  ... and {len(summary.outcomes) - SHOWN} more (--dry-run lists all)")
    return lines


# ----- redrive ---------------------------------------------------------------------------------
def cmd_redrive(args: argparse.Namespace) -> int:
    kit = toolkit(args)
    need(kit, DLQ, USAGE)
    reasons = Reasons.ANY if args.all or args.code else Reasons.PASSING
    queue = kit.usage_queue()
    queue.check()
    redriver = Redriver(
        kit.reader(),
        queue,
        dry_run=args.dry_run,
        rate=RateLimit(args.rate),
        ledger=kit.delivered_lookup(args.engine),
    )
    progress = Progress("redriving", redriver.reader.depth())
    try:
        summary = redriver.redrive(
            _filters(args, reasons), progress=lambda o: progress.step(o.action)
        )
    finally:
        progress.close()
    status = _report_run(summary, args, "redrive")
    if reasons is Reasons.PASSING and summary.not_selected and not _json(args):
        console.warn(
            f"{sum(summary.not_selected.values())} messages stayed: their reason is not a "
            "passing one (the forwarder would refuse them again). Correct them with "
            "`dlq replay --fix FILE`, drop them with `dlq discard`, or redrive them anyway "
            "with --code CODE or --all"
        )
    return status


# ----- replay ----------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    kit = toolkit(args)
    need(kit, DLQ, *((USAGE,) if args.via == "queue" else (SECRET,)))
    try:
        fix = Fix.from_file(args.fix) if args.fix else Fix()
    except ValueError as error:
        raise CliError(str(error)) from None
    resend: Resend
    if args.via == "queue":
        queue = kit.usage_queue()
        queue.check()
        resend = QueueResend(queue)
    else:
        resend = kit.sync_resend()
    reader = kit.reader()
    filters = _filters(args)
    ledger = kit.delivered_lookup(args.engine)
    if args.via == "sync" and not args.dry_run:  # it bills at once: show what, and ask
        preview = Replayer(reader, resend, fix=fix, dry_run=True, ledger=ledger).replay(filters)
        console.confirm(
            _preview(preview, "would be billed now through /v2/billing/meter_events"),
            "Bill these events now?",
            yes=args.yes,
            refusal="refusing to replay --via sync without confirmation (it bills at once): "
            "not a terminal; see it with --dry-run, then run again with --yes",
        )
    replayer = Replayer(
        reader, resend, fix=fix, dry_run=args.dry_run, rate=RateLimit(args.rate), ledger=ledger
    )
    progress = Progress("replaying", reader.depth())
    try:
        summary = replayer.replay(filters, progress=lambda o: progress.step(o.action))
    finally:
        progress.close()
    return _report_run(summary, args, "replay")


# ----- discard ---------------------------------------------------------------------------------
def cmd_discard(args: argparse.Namespace) -> int:
    filters = _filters(args)
    if not (filters.given or args.all):
        raise CliError(
            "choose what to discard: --code, --event-name, --customer, --since or --until "
            "(or --all, for every letter in the DLQ)"
        )
    if not (args.to or args.dry_run):
        raise CliError(
            "a discard writes every message it deletes to a file first: give --to FILE.jsonl"
        )
    kit = toolkit(args)
    need(kit, DLQ)
    reader = kit.reader()
    if not args.dry_run:
        preview = Discarder(reader, None, dry_run=True).discard(filters)
        console.confirm(
            _preview(preview, f"would be deleted from the DLQ (written to {args.to} first)"),
            "Discard these events (they will never be billed)?",
            yes=args.yes,
            refusal="refusing to discard without confirmation: not a terminal; see it with "
            "--dry-run, then run again with --yes",
        )
    record = open(args.to, "a") if args.to and not args.dry_run else None  # noqa: SIM115
    progress = Progress("discarding", reader.depth())
    try:
        summary = Discarder(reader, record, dry_run=args.dry_run).discard(
            filters, progress=lambda o: progress.step(o.action)
        )
    finally:
        progress.close()
        if record:
            record.close()
    status = _report_run(summary, args, "discard")
    if record and not _json(args):
        console.line(f"every message deleted is written to {args.to}")
    return status


# ----- cancel ----------------------------------------------------------------------------------
NEVER_SENT_TITLE = "not cancelled: letters whose events never reached Stripe, by reason"


def cmd_cancel(args: argparse.Namespace) -> int:
    kit = toolkit(args)
    scanned_all = True
    never_sent: Counter[str] = Counter()
    skip = _skipped(args.skip) if args.skip else []
    if args.identifiers:
        if len(args.event_names or []) != 1:
            raise CliError("--identifiers needs exactly one --event-name")
        chosen_in_dlq = [f for f in ("code", "customer", "since", "until") if getattr(args, f)]
        if chosen_in_dlq:
            raise CliError(
                f"--{chosen_in_dlq[0]} chooses letters in the DLQ: not with --identifiers"
            )
        try:
            targets = targets_from_file(args.identifiers, args.event_names[0])
        except OSError as error:
            raise CliError(f"cannot read {args.identifiers}: {error.strerror}") from None
        done = set(skip)
        targets = [t for t in targets if t.identifier not in done]
        if args.max is not None and len(targets) > args.max:
            targets, scanned_all = targets[: args.max], False
    else:
        need(kit, DLQ)
        chosen = targets_from_dlq(kit.reader(), _filters(args), skip=skip)
        targets, scanned_all, never_sent = chosen.targets, chosen.complete, chosen.never_sent
    api = None
    if not args.dry_run:
        need(kit, SECRET)
        api = kit.stripe_api()
        if targets:
            console.confirm(
                _cancel_preview(targets),
                f"Cancel these {len(targets)} events at Stripe?",
                yes=args.yes,
                refusal="refusing to cancel without confirmation: not a terminal; see what "
                "would be cancelled with --dry-run, then run again with --yes",
            )
    audit, unrecorded = _cancel(api, targets, args, kit.ledger())
    complete = scanned_all and len(audit) == len(targets)
    statuses = Counter(line.status.value for line in audit)
    if _json(args):
        console.document(
            {
                "complete": complete,
                "counts": statuses,
                "audit": [a.to_json() for a in audit],
                "never_sent": dict(never_sent),
            }
        )
    else:
        for line in audit:
            console.line(json.dumps(line.to_json()))
        table(f"cancel ({'dry run' if args.dry_run else 'done'})", sorted(statuses.items()))
        if never_sent:
            table(NEVER_SENT_TITLE, sorted(never_sent.items()))
    if not complete:
        console.warn(
            "stopped early (--max, or the DLQ could not be read whole): more events match; run "
            "again with --skip AUDIT_FILE (the --audit file of this run) so that nothing is "
            "cancelled twice"
        )
    if unrecorded:
        console.warn(f"warning: {unrecorded} (the audit above has them)")
    if any(line.status is AuditStatus.FAILED for line in audit):
        return Exit.UNREACHABLE
    bad = unrecorded or any(line.status.bad for line in audit)
    return Exit.STAYED if bad or not complete else Exit.DONE


def _cancel(
    api: Any, targets: list[CancelTarget], args: argparse.Namespace, ledger: LedgerBucket | None
) -> tuple[list[AuditLine], str | None]:
    """The run's audit, and what went wrong recording its cancels in the ledger (if it did).
    They are recorded also when the run stops on Ctrl-C or an error: its rerun skips them
    (--skip AUDIT_FILE), so this run is the only one that can."""
    progress = Progress("cancelling", len(targets))
    audit_file = open(args.audit, "a") if args.audit else None  # noqa: SIM115 (closed below)
    audit: list[AuditLine] = []

    def step(line: AuditLine) -> None:
        audit.append(line)
        progress.step(line.status)
        if audit_file:
            audit_file.write(json.dumps(line.to_json()) + "\n")
            audit_file.flush()

    run = f"cli-{uuid.uuid4().hex}"
    try:
        cancel(api, targets, rate=RateLimit(args.rate), progress=step)
    except BaseException:
        unrecorded = record(ledger, audit, run)
        if unrecorded:
            console.warn(f"warning: {unrecorded} (the audit file has them)")
        raise
    finally:
        progress.close()
        if audit_file:
            audit_file.close()
    return audit, record(ledger, audit, run)


def _cancel_preview(targets: list[CancelTarget]) -> list[str]:
    by = Counter((t.event_name, t.customer or "?") for t in targets)
    lines = [f"{len(targets)} events would be cancelled (event_name, customer: events):"]
    lines += [f"  {name}, {customer}: {count}" for (name, customer), count in by.most_common(SHOWN)]
    lines += [f"  {t.identifier}" for t in targets[:SHOWN]]
    if len(targets) > SHOWN:
        lines.append(f"  ... and {len(targets) - SHOWN} more (--dry-run lists all)")
    return lines


def _skipped(path: str) -> list[str]:
    """Identifiers handled already: one a line, or the JSON lines of an --audit file whose
    status is Stripe's last word (not `failed`, nor a dry run's `would_cancel`: those are
    cancelled on the next run)."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        skipped = []
        for text in lines:
            if not text.startswith("{"):
                skipped.append(text)
                continue
            line = json.loads(text)
            if AuditStatus(line.get("status", AuditStatus.PENDING)).settled:
                skipped.append(str(line["identifier"]))
        return skipped
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CliError(f"cannot read the identifiers to skip from {path}: {error}") from None


# ----- the parser ------------------------------------------------------------------------------
def _add_settings(
    parser: argparse.ArgumentParser, *, queue: bool = False, stripe: bool = False
) -> None:
    group = parser.add_argument_group("settings (default: the stack's outputs, else the variable)")
    group.add_argument("--dlq-url", help="the dead-letter queue (DEAD_LETTER_QUEUE_URL)")
    group.add_argument("--meter-keys", help="payload keys per event_name, JSON (METER_KEYS)")
    group.add_argument("--value-rule", help="positive_integer or decimal (VALUE_RULE)")
    if queue:
        group.add_argument("--queue-url", help="the usage queue (USAGE_QUEUE_URL)")
    if stripe:
        group.add_argument("--secret-id", help="the secret holding the key (STRIPE_SECRET_ID)")
        group.add_argument("--api-base", help="Stripe's API base (STRIPE_API_BASE)")
        group.add_argument("--api-version", help="the Stripe-Version header (STRIPE_API_VERSION)")
        group.add_argument(
            "--stripe-mode",
            choices=["test", "live"],
            help="refuse a key of the other mode (STRIPE_MODE; the stack's StripeMode)",
        )


def _add_filters(parser: argparse.ArgumentParser, max_help: str = "messages") -> None:
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
    group.add_argument("--max", type=_count, help=f"at most this many {max_help} (1 or more)")


def add_engine(parser: argparse.ArgumentParser) -> None:
    """--engine: which engine queries the delivery ledger."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="what queries the delivery ledger: athena (the default when the stack has its "
        "workgroup) or duckdb (objects read from S3 to this machine: meter-relay[local])",
    )


def _add_run(parser: argparse.ArgumentParser, *, asks: bool, rate_of: str = "messages") -> None:
    parser.add_argument("--dry-run", action="store_true", help="show what would happen")
    parser.add_argument("--rate", type=_positive, help=f"at most this many {rate_of} per second")
    if asks:
        parser.add_argument("--yes", action="store_true", help="do not ask (needed off a terminal)")


def add_commands(dlq: argparse.ArgumentParser, global_options: argparse.ArgumentParser) -> None:
    actions = dlq.add_subparsers(dest="action", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, parents=[global_options])

    listing = command("list", "summarise the DLQ without consuming it")
    _add_settings(listing)
    _add_filters(listing)
    listing.add_argument("--export", metavar="FILE.jsonl", help="write every message chosen")
    listing.set_defaults(run=cmd_list)

    show = command("show", "one message (or the letters of one source message), whole")
    show.add_argument("id", metavar="ID", help="a DLQ message id, or a SourceMessageId")
    _add_settings(show)
    show.set_defaults(run=cmd_show)

    redrive = command("redrive", "whole messages back to the usage queue, identifiers kept")
    _add_settings(redrive, queue=True)
    _add_filters(redrive)
    redrive.add_argument(
        "--all",
        action="store_true",
        help="every reason, not only passing ones (Stripe's load or time: no_answer, 5xx, 429, "
        "409, api_error, rate limits, lock_timeout, max_receive_count_exceeded)",
    )
    _add_run(redrive, asks=False)
    add_engine(redrive)
    redrive.set_defaults(run=cmd_redrive)

    replay = command("replay", "send dead-lettered events again, corrected (--fix)")
    _add_settings(replay, queue=True, stripe=True)
    _add_filters(replay)
    replay.add_argument(
        "--via",
        choices=["queue", "sync"],
        default="queue",
        help="back to the usage queue (default) or /v2/billing/meter_events (bills at once)",
    )
    replay.add_argument("--fix", metavar="FILE", help="corrections to apply (JSON)")
    _add_run(replay, asks=True)
    add_engine(replay)
    replay.set_defaults(run=cmd_replay)

    cancel_cmd = command(
        "cancel", "cancel events Stripe counted (by identifier, or the DLQ's that it may have)"
    )
    _add_settings(cancel_cmd, stripe=True)
    _add_filters(cancel_cmd)
    cancel_cmd.add_argument("--identifiers", metavar="FILE", help="one identifier per line")
    _add_run(cancel_cmd, asks=True, rate_of="cancels (events)")
    cancel_cmd.add_argument("--audit", metavar="FILE", help="append the audit lines (JSON) here")
    cancel_cmd.add_argument(
        "--skip",
        metavar="FILE",
        help="identifiers handled already, one a line or an --audit file (to continue a run)",
    )
    cancel_cmd.set_defaults(run=cmd_cancel)

    discard = command("discard", "delete letters never to be billed (written to a file first)")
    _add_settings(discard)
    _add_filters(discard)
    discard.add_argument("--all", action="store_true", help="every letter (no filter needed)")
    discard.add_argument(
        "--to", metavar="FILE.jsonl", help="where every deleted message is written first"
    )
    _add_run(discard, asks=True)
    discard.set_defaults(run=cmd_discard)
