"""The two engines that run the ledger's queries (ledger_sql.py), each answering rows of text.

- Athena (deployed): the Glue tables of the stack's database, in the stack's workgroup (its
  result location and limits), through boto3: start the query, wait for it, read its pages.
  Partition projection turns the queries' `dt` ranges into the prefixes Athena reads.
- DuckDB (locally, and for small windows): the objects of the partitions a query reads are
  fetched from S3 into a temporary folder, then read by DuckDB's `read_json`. Fetched, not read
  in place through DuckDB's httpfs: that extension is downloaded at run time from DuckDB's
  own site, which an offline machine (and this project's CI) cannot reach, while boto3 reads
  moto and S3 alike. DuckDB is an optional dependency (`pip install meter-relay[local]`).
  An event holding a lone surrogate (JSON's escape allows one, and the ledger keeps what
  Stripe received) would make DuckDB refuse its whole object: in what DuckDB reads, that
  surrogate is U+FFFD (ledger.without_lone_surrogates).

Both answer a list of rows, each a dict of column -> text (None for NULL), so that what reads
them does not know which engine ran.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.config import ConfigError
from meter_relay.ledger import SUFFIX, without_lone_surrogates
from meter_relay.ledger_sql import (
    EVENT_ARRAY,
    PARTITIONS,
    STRING,
    STRING_ARRAY,
    STRING_MAP,
    TABLES,
    Query,
    Table,
)
from meter_relay.ledger_store import LedgerBucket, LedgerUnavailable

if TYPE_CHECKING:
    from mypy_boto3_athena import AthenaClient

Row = dict[str, str | None]

# Trino's functions the queries use, for DuckDB
DUCKDB_MACROS = (
    "CREATE MACRO from_iso8601_timestamp(text) AS CAST(text AS TIMESTAMPTZ)",
    "CREATE MACRO to_unixtime(moment) AS epoch(moment)",
    "CREATE MACRO sequence(first, last) AS generate_series(first, last)",
    "CREATE MACRO cardinality(items) AS len(items)",  # of a list (the queries count no map)
)
_DUCKDB_TYPES = {
    STRING: "VARCHAR",
    STRING_MAP: "MAP(VARCHAR, VARCHAR)",
    STRING_ARRAY: "VARCHAR[]",
    EVENT_ARRAY: "STRUCT(event_name VARCHAR, payload MAP(VARCHAR, VARCHAR), identifier VARCHAR, "
    '"timestamp" VARCHAR)[]',
}


class QueryFailed(LedgerUnavailable):
    """An engine could not run a query (the message says why: fix it, or try again)."""


class Engine(Protocol):
    name: str

    def run(self, query: Query) -> list[Row]: ...


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


# ----- DuckDB ------------------------------------------------------------------------------------


class DuckDbEngine:
    """Runs a query over the ledger objects it reads, fetched into a temporary folder."""

    name = "duckdb"

    def __init__(self, ledger: LedgerBucket) -> None:
        self.ledger = ledger
        self.objects_read = 0  # fetched from S3, over every query
        # objects fetched stay for the engine's life (a command's run): a trace of thousands of
        # identifiers asks in several queries over the same hours, each fetched once. An
        # object is never changed once written (a report's rewrite holds the same lines).
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._fetched: set[str] = set()

    def run(self, query: Query) -> list[Row]:
        try:
            import duckdb  # optional: meter-relay[local]
        except ImportError:
            raise ConfigError(
                "DuckDB is not installed: `pip install 'meter-relay[local]'`, or use "
                "--engine athena"
            ) from None
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="meter-relay-ledger-")
        folder = Path(self._folder.name)
        tables = {table.name: self._fetch(table, query, folder) for table in TABLES}
        try:
            with duckdb.connect(":memory:") as connection:
                for macro in DUCKDB_MACROS:
                    connection.execute(macro)
                cursor = connection.execute(query.render(tables))
                names = [column[0] for column in cursor.description or []]
                rows = cursor.fetchall()
        except duckdb.Error as error:
            raise QueryFailed(f"DuckDB: {error}") from None
        return [
            {name: _text(value) for name, value in zip(names, row, strict=True)} for row in rows
        ]

    def _fetch(self, table: Table, query: Query, folder: Path) -> str:
        """The table's objects in the query's partitions, written under `folder` (those not
        fetched before), and how DuckDB reads them (an empty relation of the table's columns
        when there are none; objects of other partitions there are left out by the query's
        own conditions on `dt` and `hour`)."""
        keys = list(self.ledger.keys(table, query.since, query.until))
        base = folder / table.name

        def write(key: str, data: bytes) -> None:
            partition = key.split(f"{table.name}/", 1)[1]  # dt=.../hour=.../name.jsonl.zst
            path = base / partition
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(without_lone_surrogates(data))

        new = [key for key in keys if key not in self._fetched]
        self.ledger.fetch(new, write)
        self._fetched.update(new)
        self.objects_read += len(new)
        columns = ", ".join(f"\"{name}\": '{_DUCKDB_TYPES[kind]}'" for name, kind in table.columns)
        if not keys:
            empty = ", ".join(
                f'CAST(NULL AS {_DUCKDB_TYPES[kind]}) AS "{name}"' for name, kind in table.columns
            )
            parts = ", ".join(f'CAST(NULL AS VARCHAR) AS "{name}"' for name in PARTITIONS)
            return f"(SELECT {empty}, {parts} WHERE false)"
        pattern = str(base / "*" / "*" / f"*{SUFFIX}").replace("'", "''")
        hive = ", ".join(f"'{name}': 'VARCHAR'" for name in PARTITIONS)
        return (
            f"read_json('{pattern}', format = 'newline_delimited', columns = {{{columns}}}, "
            f"hive_partitioning = true, hive_types = {{{hive}}})"
        )


# ----- Athena ------------------------------------------------------------------------------------

_DONE = ("SUCCEEDED", "FAILED", "CANCELLED")


class AthenaEngine:
    """Runs a query on the stack's Glue tables in its workgroup, and reads every page."""

    name = "athena"

    def __init__(
        self,
        athena: AthenaClient,
        workgroup: str,
        database: str,
        *,
        timeout: float = 300.0,
        remaining: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.athena = athena
        self.workgroup = workgroup
        self.database = database
        self.timeout = timeout
        # a Lambda caller's time left (its own margin taken): no wait outlasts the invocation
        self._remaining = remaining
        self._sleep = sleep
        self._clock = clock
        self.last_execution: str | None = None

    def tables(self) -> dict[str, str]:
        schema = self.database.lower().replace('"', '""')
        return {table.name: f'"{schema}"."{table.name}"' for table in TABLES}

    def run(self, query: Query) -> list[Row]:
        try:
            started = self.athena.start_query_execution(
                QueryString=query.render(self.tables()),
                QueryExecutionContext={"Database": self.database},
                WorkGroup=self.workgroup,
            )
            execution = started["QueryExecutionId"]
            self.last_execution = execution
            self._wait(execution)
            return self._rows(execution)
        except (BotoCoreError, ClientError) as error:
            raise _unavailable(error) from error

    def _wait(self, execution: str) -> None:
        limit = self.timeout
        if self._remaining is not None:
            limit = min(limit, self._remaining())
        deadline = self._clock() + limit
        pause = 0.2
        while True:
            status = self.athena.get_query_execution(QueryExecutionId=execution)
            state = status["QueryExecution"].get("Status", {})
            if state.get("State") in _DONE:
                break
            if self._clock() > deadline:
                self.athena.stop_query_execution(QueryExecutionId=execution)
                raise QueryFailed(
                    f"Athena query {execution} did not finish in {limit:.0f} s (stopped)"
                )
            self._sleep(pause)
            pause = min(pause * 2, 2.0)
        if state.get("State") != "SUCCEEDED":
            why = state.get("StateChangeReason") or state.get("AthenaError", {}).get(
                "ErrorMessage", ""
            )
            raise QueryFailed(f"Athena query {execution} {state.get('State', '?').lower()}: {why}")

    def _rows(self, execution: str) -> list[Row]:
        names: list[str] = []
        rows: list[Row] = []
        pages = self.athena.get_paginator("get_query_results")
        for page in pages.paginate(QueryExecutionId=execution):
            result = page["ResultSet"]
            if not names:
                info = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                names = [column["Name"] for column in info]
            for row in result.get("Rows", []):
                values = [cell.get("VarCharValue") for cell in row.get("Data", [])]
                if values == names and not rows:
                    continue  # a SELECT's first row repeats the column names
                rows.append(dict(zip(names, values, strict=False)))
        return rows


def _unavailable(error: BotoCoreError | ClientError) -> LedgerUnavailable:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        said = f"{error.operation_name}: {details.get('Code', '')}: {details.get('Message', '')}"
        return LedgerUnavailable(f"Athena: {said}")
    return LedgerUnavailable(f"Athena: {type(error).__name__}: {error}")
