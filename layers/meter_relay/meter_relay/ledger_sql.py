"""The delivery ledger's queries: one SQL text each, run by Athena (deployed) or DuckDB (locally).

The ledger's three kinds of object are three tables, each partitioned by the UTC date and hour
it was written (`dt`, `hour`, both text):
- `events`: what Stripe accepted, as the forwarder recorded it (ledger.DeliveredEvents): a line
  holds up to 100 events as sent, their SQS message ids and their meters' payload keys. The
  queries read it through `EVENTS_VIEW`, a row per event with flat columns (identifier,
  event_name, customer, value, timestamp, ...);
- `cancellations`: the adjustments `dlq cancel` made (ledger_store.CancellationLine);
- `rejections`: what Stripe's error reports said it dropped later (ledger_store.RejectionLine).

A query is written once, in the SQL both engines speak (Trino's functions, which DuckDB is
given as macros: `from_iso8601_timestamp`, `to_unixtime`), with `{events}`, `{cancellations}`
and `{rejections}` where a table goes: Athena puts the Glue table there, DuckDB a `read_json`
over the objects. Values are written into the text as SQL literals (`literal`), never pasted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Stripe takes a timestamp up to 5 minutes ahead: an event of a window may be delivered (and
# recorded) that much before the window starts.
FUTURE_LIMIT = timedelta(minutes=5)
# Stripe counts an identifier again once 24 hours have passed since it last counted it
STRIPE_DEDUP = timedelta(hours=24)

STRING, STRING_MAP = "string", "map<string,string>"  # Glue's names; DuckDB's in ledger_engines
STRING_ARRAY = "array<string>"
EVENT_ARRAY = (  # ledger.StripeEvent, each event as the stream call sent it
    "array<struct<event_name:string,payload:map<string,string>,identifier:string,timestamp:string>>"
)


@dataclass(frozen=True)
class Table:
    """One kind of ledger object: where it lies in the bucket and the columns of its lines."""

    name: str  # also its prefix in the bucket: <name>/dt=YYYY-MM-DD/hour=HH/<object>.jsonl.zst
    columns: tuple[tuple[str, str], ...]  # (name, Glue type), in the order of the lines' keys
    view: str = "{table}"  # what the queries read: a SELECT over `{table}` as an engine names it


# A row per event: the line's n-th event and n-th message id. The customer and the value are
# where the event's meter finds them. try(): Trino's subscript fails on a key the map lacks
# (DuckDB's gives NULL), and NULL is what a missing one means here.
EVENTS_VIEW = """(SELECT x.events[n.i].identifier AS identifier,
  x.events[n.i].event_name AS event_name,
  try(x.events[n.i].payload[x.customer_key]) AS customer,
  try(x.events[n.i].payload[x.value_key]) AS value,
  x.events[n.i]."timestamp" AS "timestamp", x.delivered_at, x.message_ids[n.i] AS message_id,
  x.request_id, x.dt, x."hour"
  FROM {table} x CROSS JOIN UNNEST(sequence(1, cardinality(x.events))) AS n(i))"""
EVENTS = Table(
    "events",
    (
        ("delivered_at", STRING),
        ("request_id", STRING),
        ("customer_key", STRING),
        ("value_key", STRING),
        ("message_ids", STRING_ARRAY),
        ("events", EVENT_ARRAY),
    ),
    EVENTS_VIEW,
)
CANCELLATIONS = Table(
    "cancellations",
    (
        ("identifier", STRING),
        ("event_name", STRING),
        ("adjustment_id", STRING),
        ("status", STRING),
        ("cancelled_at", STRING),
    ),
)
REJECTIONS = Table(
    "rejections",
    (
        ("identifier", STRING),
        ("code", STRING),
        ("message", STRING),
        ("stripe_event_id", STRING),
        ("event_type", STRING),
        ("meter_id", STRING),
        ("validation_start", STRING),
        ("validation_end", STRING),
        ("reported_at", STRING),
    ),
)
TABLES = (EVENTS, CANCELLATIONS, REJECTIONS)
PARTITIONS = ("dt", "hour")


def literal(value: str | int | float) -> str:
    """A value as an SQL literal: text quoted (a quote doubled), a number as itself."""
    if isinstance(value, bool):
        raise TypeError("no booleans in the ledger's queries")
    if isinstance(value, int | float):
        return repr(value)
    if "\x00" in value:
        raise ValueError("a NUL character cannot be in a query")
    return "'" + value.replace("'", "''") + "'"


def literals(values: Iterable[str]) -> str:
    """A parenthesised list of text literals, for IN (never empty: SQL has no empty list)."""
    listed = [literal(value) for value in values]
    if not listed:
        raise ValueError("an IN list needs at least one value")
    return "(" + ", ".join(listed) + ")"


def day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Query:
    """An SQL text with its tables left as `{events}`, `{cancellations}`, `{rejections}`, and
    the span of partitions (written from `since` to `until`) it reads."""

    text: str
    since: datetime
    until: datetime

    def render(self, tables: Mapping[str, str]) -> str:
        """The text with each table's reference, as an engine names it."""
        text = self.text
        for table in TABLES:
            text = text.replace(_mark(table.name), table.view.format(table=tables[table.name]))
        return text


def _mark(table: str) -> str:
    """Where a table goes in a query's text until an engine names it: NUL characters, which no
    literal holds (`literal` refuses them), so no value can pass for a table."""
    return f"\x00{table}\x00"


_TABLES = {table.name: _mark(table.name) for table in TABLES}


def _written(alias: str, since: datetime, until: datetime) -> str:
    """The partitions written from `since` to `until`, to the hour: the days (which every
    engine prunes by), and the hours of the first and the last day."""
    first, last = since.astimezone(UTC), until.astimezone(UTC)
    d1, d2 = literal(day(first)), literal(day(last))
    h1, h2 = literal(f"{first:%H}"), literal(f"{last:%H}")
    dt, hour = f"{alias}.dt", f'{alias}."hour"'
    return (
        f"{dt} BETWEEN {d1} AND {d2}"
        f" AND ({dt} > {d1} OR {hour} >= {h1}) AND ({dt} < {d2} OR {hour} <= {h2})"
    )


# ----- trace -------------------------------------------------------------------------------------

TRACE = """\
SELECT 'delivered' AS kind, e.identifier, e.event_name, e.customer, e.value,
       e."timestamp" AS event_time, e.delivered_at AS recorded_at, e.request_id AS reference,
       e.message_id AS detail, CAST(NULL AS VARCHAR) AS code
FROM {events} e
WHERE {events_written} AND e.identifier IN {identifiers}
UNION ALL
SELECT 'cancelled', c.identifier, c.event_name, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
       CAST(NULL AS VARCHAR), c.cancelled_at, c.adjustment_id, c.status, CAST(NULL AS VARCHAR)
FROM {cancellations} c
WHERE {cancellations_written} AND c.identifier IN {identifiers}
UNION ALL
SELECT 'rejected', r.identifier, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR),
       CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), r.reported_at, r.stripe_event_id,
       r.message, r.code
FROM {rejections} r
WHERE {rejections_written} AND r.identifier IN {identifiers}
ORDER BY identifier, recorded_at, kind
"""


def trace(identifiers: Iterable[str], since: datetime, until: datetime) -> Query:
    """Every record of these identifiers written from `since` to `until`: each delivery, each
    cancellation, each rejection Stripe reported (kind, recorded_at, reference, detail, code)."""
    return _query(TRACE, since, until, identifiers=literals(identifiers))


def _query(text: str, since: datetime, until: datetime, **values: str) -> Query:
    """A query's text with its values, reading the partitions written from since to until."""
    written = {
        f"{table}_written": _written(alias, since, until)
        for table, alias in (("events", "e"), ("cancellations", "c"), ("rejections", "r"))
    }
    return Query(text.format(**_TABLES, **written, **values), since, until)


# ----- what was delivered (replays consult it) ---------------------------------------------------

DELIVERED = """\
WITH rejected AS (
  SELECT r.identifier, max(r.reported_at) AS reported_at
  FROM {rejections} r
  WHERE {rejections_written} AND r.identifier IN {identifiers}
  GROUP BY r.identifier
)
SELECT e.identifier, max(e.delivered_at) AS delivered_at
FROM {events} e LEFT JOIN rejected ON rejected.identifier = e.identifier
WHERE {events_written} AND e.identifier IN {identifiers}
  AND (rejected.reported_at IS NULL OR e.delivered_at > rejected.reported_at)
GROUP BY e.identifier
ORDER BY e.identifier
"""


def delivered(identifiers: Iterable[str], since: datetime, until: datetime) -> Query:
    """The identifiers Stripe accepted from `since` on and did not report rejected after, each
    with its latest such delivery."""
    return _query(DELIVERED, since, until, identifiers=literals(identifiers))


# ----- reconcile ---------------------------------------------------------------------------------

RECONCILE = """\
WITH rejected AS (
  SELECT r.identifier, max(r.reported_at) AS reported_at
  FROM {rejections} r
  WHERE {rejections_written}
  GROUP BY r.identifier
),
cancels AS (
  SELECT c.identifier, c.event_name, c.cancelled_at,
         to_unixtime(from_iso8601_timestamp(upper(c.cancelled_at))) AS cancelled_epoch
  FROM {cancellations} c
  WHERE {cancellations_written}
),
deliveries AS (
  SELECT e.identifier, e.event_name, e.customer, e.value, e."timestamp", e.delivered_at,
         to_unixtime(from_iso8601_timestamp(upper(e.delivered_at))) AS delivered_epoch,
         rejected.reported_at IS NULL OR e.delivered_at > rejected.reported_at AS accepted,
         row_number() OVER (
           PARTITION BY e.identifier, e.delivered_at ORDER BY e.request_id
         ) AS twin
  FROM {events} e LEFT JOIN rejected ON rejected.identifier = e.identifier
  WHERE {events_written}
),
count1 AS (
  SELECT d.*, min(d.delivered_epoch) OVER (PARTITION BY d.identifier, d.accepted) AS counted1
  FROM deliveries d
),
count2 AS (
  SELECT c.*,
         min(CASE WHEN c.delivered_epoch >= c.counted1 + {dedup} THEN c.delivered_epoch END)
           OVER (PARTITION BY c.identifier, c.accepted) AS counted2
  FROM count1 c
),
count3 AS (
  SELECT c.*,
         min(CASE WHEN c.delivered_epoch >= c.counted2 + {dedup} THEN c.delivered_epoch END)
           OVER (PARTITION BY c.identifier, c.accepted) AS counted3
  FROM count2 c
),
stripes AS (
  SELECT o.customer, o.value, o.delivered_at, o."timestamp",
         o.accepted AND o.twin = 1
           AND o.delivered_epoch IN (o.counted1, o.counted2, o.counted3) AS stripe_counted,
         max(x.cancelled_at) AS cancelled_at
  FROM count3 o LEFT JOIN cancels x
    ON x.identifier = o.identifier AND x.event_name = o.event_name
      AND x.cancelled_at > o.delivered_at AND x.cancelled_epoch <= o.delivered_epoch + {dedup}
  WHERE o.event_name = {event_name}{customers}
  GROUP BY o.identifier, o.delivered_at, o.twin, o.customer, o.value, o."timestamp",
           o.accepted, o.delivered_epoch, o.counted1, o.counted2, o.counted3
),
counted AS (
  SELECT customer, value, delivered_at,
         to_unixtime(from_iso8601_timestamp(upper("timestamp"))) AS event_epoch,
         stripe_counted AND cancelled_at IS NULL AS counts,
         CASE WHEN stripe_counted THEN cancelled_at END AS cancelled_at
  FROM stripes
),
windowed AS (
  SELECT customer, value, delivered_at, counts, cancelled_at,
         CAST(floor(event_epoch / {step}) AS BIGINT) * {step} AS window_start,
         rank() OVER (
           PARTITION BY customer, CAST(floor(event_epoch / {step}) AS BIGINT)
           ORDER BY CASE WHEN counts THEN 0 ELSE 1 END, event_epoch DESC, delivered_at DESC
         ) AS newest
  FROM counted
  WHERE event_epoch >= {start} AND event_epoch < {end}
)
SELECT customer, window_start, count(CASE WHEN counts THEN 1 END) AS events,
       sum(CASE WHEN counts THEN TRY_CAST(value AS DECIMAL(32, 12)) END) AS total,
       min(CASE WHEN counts AND newest = 1 THEN TRY_CAST(value AS DECIMAL(38, 12)) END)
         AS last_value,
       max(CASE WHEN counts AND newest = 1 THEN TRY_CAST(value AS DECIMAL(38, 12)) END)
         AS last_highest,
       count(DISTINCT CASE WHEN counts AND newest = 1 THEN TRY_CAST(value AS DECIMAL(38, 12)) END)
         AS last_values,
       max(CASE WHEN counts THEN delivered_at END) AS last_delivered_at,
       max(cancelled_at) AS last_cancelled_at
FROM windowed
GROUP BY customer, window_start
ORDER BY customer, window_start
"""


def reconcile(
    event_name: str,
    customers: Iterable[str],
    start: datetime,
    end: datetime,
    step: int,
    *,
    now: datetime,
) -> Query:
    """Per customer and window of `step` seconds (by event timestamp, in [start, end)): the
    events Stripe counts as the ledger knows them, with a row also where none counts (a
    customer whose events were all cancelled is one to compare).

    An identifier counts at its first delivery since Stripe last reported it rejected, and
    again, as at Stripe, at its first delivery 24 hours or more after the one counted before (up
    to three counts in the deliveries read: a fourth needs resends over more than 72 hours); not
    if it was cancelled within 24 hours after that delivery (Stripe cancels an event only so
    long after receiving it: a cancel of the second count leaves the first; `last_cancelled_at`:
    the latest such cancel). A window's last value is its newest event's (by timestamp, then
    delivery); events that tie on both (one invocation's, sent in concurrent calls) give the
    lowest and highest of their values and how many differ, since Stripe's order among them is
    unknown. A value beyond DECIMAL(32, 12) (20 digits before the point) adds nothing to a sum,
    so its window disagrees with Stripe's, rather than failing every window's query: a sum is
    DECIMAL(38, 12), so a million such values of a window still fit. Events of the
    windows are delivered from 5 minutes before `start` (Stripe's future limit) until `now`:
    those partitions are read."""
    chosen = list(customers)
    return _query(
        RECONCILE,
        start - FUTURE_LIMIT,
        now,
        event_name=literal(event_name),
        customers=f" AND o.customer IN {literals(chosen)}" if chosen else "",
        step=literal(step),
        dedup=literal(int(STRIPE_DEDUP.total_seconds())),
        start=literal(int(start.timestamp())),
        end=literal(int(end.timestamp())),
    )
