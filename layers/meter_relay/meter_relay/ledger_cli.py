"""`meter-relay trace` and `meter-relay reconcile`: what the delivery ledger answers.

    meter-relay trace IDENTIFIER... | --file FILE [--since T] [--until T] [--engine E]
    meter-relay reconcile --event-name NAME --since T [--until T] [--customer C ...]
                          [--window hour|day] [--settle-minutes N] [--engine E]

trace: where each event is: delivered (when, by which invocation, from which SQS message),
cancelled (the adjustment), reported rejected by Stripe (the report, the code), dead-lettered
(the DLQ's letters, read without consuming them); an identifier found nowhere is unknown
(exit 1). reconcile: per customer and window, what the ledger says Stripe should count
against Stripe's meter event summaries; a table of the mismatches (exit 1 when there is one).
The engine: Athena where the stack has its workgroup, else DuckDB (`--engine`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meter_relay import console
from meter_relay.cli import CliError, Exit, need, stripe_exit, toolkit
from meter_relay.cli_dlq import _add_settings, add_engine
from meter_relay.dlq.scan import WhenFull
from meter_relay.dlq.toolkit import Toolkit
from meter_relay.events import format_timestamp, parse_rfc3339
from meter_relay.ledger_queries import LedgerQueries, Record
from meter_relay.ledger_store import SYNC_REPLAY
from meter_relay.reconcile import (
    WINDOWS,
    MeterSummaries,
    Reconciliation,
    StripeFailed,
    reconcile,
    settled,
)

TRACE_DAYS = 35  # how far back trace looks by default: Stripe's own window for timestamps
SETTLE_MINUTES = 5.0


def register(
    areas: argparse._SubParsersAction[argparse.ArgumentParser],
    global_options: argparse.ArgumentParser,
) -> None:
    """The `trace` and `reconcile` commands, on the CLI's parser."""
    trace_cmd = areas.add_parser(
        "trace",
        help="where each event is: delivered, cancelled, rejected by Stripe, dead-lettered",
        parents=[global_options],
    )
    trace_cmd.add_argument("identifiers", nargs="*", metavar="IDENTIFIER")
    trace_cmd.add_argument("--file", metavar="FILE", help="identifiers, one a line")
    trace_cmd.add_argument(
        "--since", help=f"recorded at or after (RFC 3339; default: {TRACE_DAYS} days ago)"
    )
    trace_cmd.add_argument("--until", help="recorded at or before (RFC 3339; default: now)")
    trace_cmd.add_argument(
        "--no-dlq", action="store_true", help="do not read the DLQ (the ledger only)"
    )
    _add_json(trace_cmd)
    _add_ledger_settings(trace_cmd)
    trace_cmd.set_defaults(run=cmd_trace)

    rec = areas.add_parser(
        "reconcile",
        help="the ledger against Stripe's meter event summaries, per customer and window",
        parents=[global_options],
    )
    rec.add_argument("--event-name", required=True, help="the meter's event_name")
    rec.add_argument("--since", required=True, help="from this event time (RFC 3339)")
    rec.add_argument("--until", help="to this event time (RFC 3339; default: now)")
    rec.add_argument("--customer", action="append", help="only these customers (repeat)")
    rec.add_argument("--window", choices=sorted(WINDOWS), default="hour", help="default: hour")
    rec.add_argument(
        "--settle-minutes",
        type=_minutes,
        default=SETTLE_MINUTES,
        help="leave out the last N minutes before now: Stripe's summaries lag (default: 5)",
    )
    rec.add_argument("--meter-id", help="the meter (default: the event_name's active meter)")
    _add_json(rec)
    _add_ledger_settings(rec, stripe=True)
    rec.set_defaults(run=cmd_reconcile)


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_const",
        dest="output",
        const="json",
        default=argparse.SUPPRESS,
        help="the same as --output json",
    )


def _add_ledger_settings(parser: argparse.ArgumentParser, *, stripe: bool = False) -> None:
    _add_settings(parser, stripe=stripe)
    group = parser.add_argument_group("the delivery ledger (default: the stack's outputs)")
    group.add_argument("--ledger-bucket", help="its bucket (LEDGER_BUCKET)")
    group.add_argument("--workgroup", help="the Athena workgroup (LEDGER_WORKGROUP)")
    group.add_argument("--database", help="the Glue database (LEDGER_DATABASE)")
    add_engine(parser)


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of minutes, not {text!r}") from None
    if not 0 <= value <= 24 * 60:
        raise argparse.ArgumentTypeError("must be between 0 and 1440 minutes")
    return value


def _moment(text: str | None, flag: str, default: datetime) -> datetime:
    if text is None:
        return default
    moment = parse_rfc3339(text)
    if moment is None:
        raise CliError(f"{flag} takes an RFC 3339 date-time such as 2026-11-21T00:00:00Z")
    return moment.astimezone(UTC)


def _kit(args: argparse.Namespace) -> Toolkit:
    kit = toolkit(args)
    if not kit.config.ledger_bucket:
        raise CliError(
            "the delivery ledger is not known: give --stack-name of a stack with the ledger "
            "(DeliveryLedger enabled), or --ledger-bucket (or LEDGER_BUCKET)"
        )
    return kit


# ----- trace -----------------------------------------------------------------------------------


@dataclass
class Letter:
    message_id: str
    code: str
    error_message: str
    first_seen: str

    def to_json(self) -> dict[str, str]:
        return {
            "kind": "dead_lettered",
            "message_id": self.message_id,
            "code": self.code,
            "message": self.error_message,
            "first_seen": self.first_seen,
        }


@dataclass
class Trace:
    identifier: str
    records: list[Record] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)

    @property
    def where(self) -> str:
        """Where the event is now: its latest word, of the ledger's, else the DLQ's."""
        if self.records:
            last = self.records[-1]
            return {"delivered": "delivered", "cancelled": "cancelled"}.get(
                last.kind, "rejected by Stripe"
            )
        return "dead-lettered" if self.letters else "unknown"

    def to_json(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "where": self.where,
            "records": [r.to_json() for r in self.records] + [x.to_json() for x in self.letters],
        }


def _identifiers(args: argparse.Namespace) -> list[str]:
    identifiers = list(args.identifiers)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8-sig")  # a BOM: an Excel export
        except OSError as error:
            raise CliError(f"cannot read {args.file}: {error.strerror}") from None
        identifiers += [line.strip() for line in text.splitlines() if line.strip()]
    if not identifiers:
        raise CliError("name the events: IDENTIFIER... or --file FILE (one identifier a line)")
    return list(dict.fromkeys(identifiers))


def cmd_trace(args: argparse.Namespace) -> int:
    identifiers = _identifiers(args)
    now = datetime.now(UTC)
    since = _moment(args.since, "--since", now - timedelta(days=TRACE_DAYS))
    until = _moment(args.until, "--until", now)
    if until < since:
        given = args.until or format_timestamp(until), args.since or format_timestamp(since)
        raise CliError(f"--until {given[0]} is before --since {given[1]}")
    kit = _kit(args)
    engine = kit.ledger_engine(args.engine)
    found = LedgerQueries(engine).trace(identifiers, since, until)
    traces = {i: Trace(i, found.get(i, [])) for i in identifiers}
    dlq_read: dict[str, Any] | None = None
    if not args.no_dlq and kit.config.dead_letter_queue_url:
        dlq_read = _read_letters(kit, traces)
    unknown = [t.identifier for t in traces.values() if t.where == "unknown"]
    searched = {
        "since": format_timestamp(since),
        "until": format_timestamp(until),
        "engine": engine.name,
        "dlq": dlq_read,
    }
    if args.output == "json":
        console.document(
            {
                "events": [t.to_json() for t in traces.values()],
                "unknown": unknown,
                "searched": searched,
            }
        )
    else:
        _print_traces(list(traces.values()))
        dlq = (
            f"the DLQ ({dlq_read['seen']} of ~{dlq_read['depth']} messages read)"
            if dlq_read
            else "not the DLQ"
        )
        console.line(
            f"searched the ledger recorded {searched['since']} to {searched['until']} "
            f"({engine.name}) and {dlq}"
        )
    if unknown:
        console.warn(
            f"{len(unknown)} of {len(identifiers)} events are unknown: {_unseen(dlq_read)}"
        )
        return Exit.STAYED
    return Exit.DONE


def _unseen(dlq_read: dict[str, Any] | None) -> str:
    """Where an unknown event was looked for, and where it was not: a DLQ left unread, or read
    only in part, may still hold it."""
    ledger = "not in the ledger (widen --since?)"
    if dlq_read is None:
        return f"{ledger}; the DLQ was not read"
    if dlq_read["shortfall"]:
        return f"{ledger}, nor in the part of the DLQ read: {dlq_read['shortfall']}"
    return f"{ledger} nor in the DLQ"


def _read_letters(kit: Toolkit, traces: dict[str, Trace]) -> dict[str, Any]:
    """The DLQ's letters of the traced events, read without consuming anything."""
    need(kit, "DEAD_LETTER_QUEUE_URL")
    reader = kit.reader()
    with closing(reader.scan(when_full=WhenFull.STOP)) as messages:
        for message in messages:
            for event in message.events:
                trace = traces.get(event.identifier or "")
                if trace is not None:
                    trace.letters.append(
                        Letter(
                            message.message_id,
                            message.code,
                            message.error_message,
                            format_timestamp(message.first_seen),
                        )
                    )
    stats = reader.stats
    return {
        "seen": stats.seen,
        "depth": stats.depth,
        "shortfall": stats.shortfall(reader.max_held),
    }


def _describe(record: Record) -> str:
    if record.kind == "delivered":
        by = (
            "a sync replay"  # dlq replay --via sync: Stripe counted it without the forwarder
            if (record.reference or "").startswith(SYNC_REPLAY)
            else "invocation"
        )
        return (
            f"delivered {record.at} by {by} {record.reference} (SQS message "
            f"{record.detail}; {record.event_name}, {record.customer}, value {record.value})"
        )
    if record.kind == "cancelled":
        return f"cancelled {record.at}: adjustment {record.reference} ({record.detail})"
    return f"rejected by Stripe {record.at}: {record.code} (report {record.reference})"


def _print_traces(traces: Sequence[Trace]) -> None:
    width = max(len(t.identifier) for t in traces)
    for trace in traces:
        console.line(f"{trace.identifier:<{width}}  {trace.where}")
        for record in trace.records:
            console.line(f"{'':<{width}}    {_describe(record)}")
        for letter in trace.letters:
            console.line(
                f"{'':<{width}}    in the DLQ: {letter.code} (message {letter.message_id}, "
                f"first seen {letter.first_seen})"
            )


# ----- reconcile -------------------------------------------------------------------------------


def cmd_reconcile(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = _moment(args.since, "--since", now)
    until = _moment(args.until, "--until", now)
    end = settled(until, now, args.settle_minutes)
    if end <= since:
        raise CliError(
            f"nothing to compare: --until is within the last {args.settle_minutes:g} minutes "
            "Stripe's summaries may still lag (--settle-minutes), or not after --since"
        )
    kit = _kit(args)
    need(kit, "STRIPE_SECRET_ID")
    stripe = MeterSummaries(kit.stripe_api())
    try:
        meter = stripe.meter(args.event_name, args.meter_id)
        queries = LedgerQueries(kit.ledger_engine(args.engine))
        progress = console.Progress("asking Stripe", len(args.customer or []) or 1)
        try:
            result = reconcile(
                queries,
                stripe,
                meter,
                since=since,
                until=end,
                grouping=args.window,
                customers=args.customer or [],
                on_customer=progress.step,
                delivered_until=now - timedelta(minutes=args.settle_minutes),
            )
        finally:
            progress.close()
    except StripeFailed as error:
        raise CliError(f"Stripe: {error}", stripe_exit(error.status)) from None
    lagging = until > now - timedelta(minutes=args.settle_minutes)
    _report(args, result, until, end, lagging=lagging)
    return Exit.STAYED if result.mismatches else Exit.DONE


def _unsettled(result: Reconciliation) -> str:
    return ", ".join(f"{who} {window.to_json()['start']}" for who, window in result.unsettled)


def _report(
    args: argparse.Namespace,
    result: Reconciliation,
    until: datetime,
    end: datetime,
    *,
    lagging: bool,
) -> None:
    """The table (or the document), then what was left out and why: the last minutes, which
    Stripe's summaries may not have yet (`lagging`), or the seconds after --until's minute."""
    left_out = end < until
    for note in result.notes:
        console.warn(note)
    if args.output == "json":
        document = result.to_json()
        document.update(settle_minutes=args.settle_minutes, window=args.window)
        console.document(document)
    else:
        meter = result.meter
        span = result.to_json()
        console.line(
            f"reconcile {meter.event_name} (meter {meter.id}, formula {meter.formula}) "
            f"by {args.window}, {span['since']} to {span['until']}"
        )
        console.line(
            f"{len(result.customers)} customers, {result.compared} customer-windows with usage, "
            f"{len(result.mismatches)} mismatches"
        )
        if result.mismatches:
            rows = [m.to_json() for m in result.mismatches]
            header = ("customer", "window start", "ledger", "stripe", "difference", "events")
            keys = ("customer", "start", "ledger", "stripe", "difference", "ledger_events")
            table = [header] + [tuple(str(row[k]) for k in keys) for row in rows]
            widths = [max(len(line[i]) for line in table) for i in range(len(header))]
            for index, line in enumerate(table):
                console.line("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
                note = rows[index - 1]["note"] if index else ""
                if note:
                    console.line(f"    {note}")
    if left_out:
        why = (
            "Stripe's summaries are eventually consistent "
            f"(--settle-minutes {args.settle_minutes:g})"
            if lagging
            else "Stripe's summaries are by whole minutes (--until cut to its minute)"
        )
        said = f"left out: events after {end:%Y-%m-%dT%H:%M:%SZ}: {why}"
        if args.output == "json":
            console.warn(said)
        else:
            console.line(said)
    if result.unsettled:
        console.warn(
            f"{len(result.unsettled)} customer-windows disagree but hold events delivered or "
            f"cancelled in the last {args.settle_minutes:g} minutes, which Stripe's summaries "
            "may not show "
            "yet: not called mismatches; run again later"
            + ("" if args.output == "json" else ": " + _unsettled(result))
        )
    if not args.customer:
        console.warn(
            "customers compared: those the ledger has events of in these windows (counted or "
            "not); name others with "
            "--customer (usage at Stripe for a customer the relay never sent is seen only then)"
        )
