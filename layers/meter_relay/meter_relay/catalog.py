"""The account's meters, as the forwarder needs them: by event_name, the meter's id, whether it
is active, and the payload keys of its customer and its value.

Stripe's stream takes any event and drops, later and quietly, one whose event_name has no meter
or an archived one. So the refresher (which holds the secret key) reads every meter
(`GET /v1/billing/meters`, every page, active and inactive) on each run and stores a compact
catalog in SSM String parameters under one path, split in parts that fit SSM's 4 KB standard
tier; the forwarder reads it beside the session and refuses such events before sending them,
with Stripe's own codes (`no_meter`, `archived_meter`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meter_relay.events import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, ValidationRules
from meter_relay.observability import logger
from meter_relay.stripe_client import Kind, StripeApi

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

PART_CHARS = 4000  # a standard-tier String parameter holds 4,096 characters
MAX_PAGES = 100  # 10,000 meters: far more than any account has; a bound, not a goal


class CatalogError(Exception):
    """The meters could not be read (Stripe refused, or the network); the message names no
    secret. `status` is Stripe's HTTP status, 0 when no answer came."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Meter:
    meter_id: str
    active: bool
    customer_key: str = DEFAULT_CUSTOMER_KEY
    value_key: str = DEFAULT_VALUE_KEY


@dataclass(frozen=True)
class MeterCatalog:
    """Meters by event_name. Where several meters share an event_name, an active one is the
    one Stripe counts the event for."""

    meters: Mapping[str, Meter]

    def get(self, event_name: str) -> Meter | None:
        return self.meters.get(event_name)

    def to_text(self) -> str:
        rows = {
            name: [m.meter_id, int(m.active), m.customer_key, m.value_key]
            for name, m in sorted(self.meters.items())
        }
        return json.dumps(rows, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str) -> MeterCatalog:
        rows = json.loads(text)
        if not isinstance(rows, dict):
            raise ValueError("a meter catalog is a JSON object")
        return cls(
            {
                str(name): Meter(str(row[0]), bool(row[1]), str(row[2]), str(row[3]))
                for name, row in rows.items()
            }
        )

    @classmethod
    def from_stripe(cls, meters: list[dict[str, Any]]) -> MeterCatalog:
        """From `billing.meter` objects (their status, customer_mapping, value_settings)."""
        chosen: dict[str, Meter] = {}
        for meter in meters:
            name = meter.get("event_name")
            if not isinstance(name, str) or not name:
                continue
            customer = (meter.get("customer_mapping") or {}).get("event_payload_key")
            value = (meter.get("value_settings") or {}).get("event_payload_key")
            entry = Meter(
                str(meter.get("id")),
                meter.get("status") == "active",
                customer if isinstance(customer, str) and customer else DEFAULT_CUSTOMER_KEY,
                value if isinstance(value, str) and value else DEFAULT_VALUE_KEY,
            )
            if name not in chosen or (entry.active and not chosen[name].active):
                chosen[name] = entry
        return cls(chosen)


def read_meters(api: StripeApi, timeout: float) -> MeterCatalog:
    """Every meter of the account, active and inactive, page after page."""
    return MeterCatalog.from_stripe(list_meters(api, timeout))


def list_meters(api: StripeApi, timeout: float) -> list[dict[str, Any]]:
    """Every `billing.meter` object of the account, page after page."""
    meters: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["starting_after"] = after
        answer = api.list_meters(params, timeout)
        if answer.kind is not Kind.OK or answer.body is None:
            raise CatalogError(f"Stripe did not list the meters: {answer.error}", answer.status)
        page = answer.body.get("data")
        if not isinstance(page, list):
            raise CatalogError("Stripe answered the meter list with an unexpected object")
        meters.extend(item for item in page if isinstance(item, dict))
        if not answer.body.get("has_more") or not page:
            return meters
        after = str(page[-1].get("id"))
    raise CatalogError(f"more than {MAX_PAGES} pages of meters")


class CatalogStore:
    """The catalog in SSM String parameters under `path`: `<path>/0`, `<path>/1`, ... each
    holding a part of the zlib-compressed, base64-encoded text, with the digest of the whole
    and the number of parts, so that a reader never mixes parts of two versions."""

    def __init__(self, path: str, ssm: SSMClient) -> None:
        self.path = path.rstrip("/")
        self._ssm = ssm

    def read(self) -> MeterCatalog | None:
        """The stored catalog; None when there is none (or only part of one: being written)."""
        return _assemble(self._parts())

    def _parts(self) -> dict[int, Any]:
        parts: dict[int, Any] = {}
        pages = self._ssm.get_paginator("get_parameters_by_path")
        for page in pages.paginate(Path=self.path, Recursive=False):
            for parameter in page.get("Parameters", []):
                index = parameter["Name"].rsplit("/", 1)[-1]
                try:
                    parts[int(index)] = json.loads(parameter["Value"])
                except (ValueError, TypeError):
                    parts[-1] = None  # not a part: the whole is unusable
        return parts

    def write(self, catalog: MeterCatalog) -> bool:
        """Store the catalog unless the stored one is the same; True when it was written."""
        text = catalog.to_text()
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        existing = self._parts()
        stored = _assemble(existing)
        if stored is not None and stored.to_text() == text:
            return False
        data = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
        chunks = [data[i : i + PART_CHARS - 100] for i in range(0, len(data), PART_CHARS - 100)]
        chunks = chunks or [""]
        for index, chunk in enumerate(chunks):
            value = json.dumps({"v": digest, "n": len(chunks), "d": chunk}, separators=(",", ":"))
            self._ssm.put_parameter(
                Name=f"{self.path}/{index}",
                Value=value,
                Type="String",
                Overwrite=True,
                Description="Stripe meters by event_name (written by Meter Relay's refresher)",
            )
        extra = [f"{self.path}/{i}" for i in sorted(existing) if i >= len(chunks)]
        for start in range(0, len(extra), 10):  # an older, longer catalog's parts
            self._ssm.delete_parameters(Names=extra[start : start + 10])
        return True


def with_catalog_keys(rules: ValidationRules, store: CatalogStore | None) -> ValidationRules:
    """The rules the operator tools judge letters and rebuild bodies by: the stored catalog's
    payload keys per meter, METER_KEYS over them (`rules` as they are without a catalog).
    The meters themselves are not judged here: a catalog minutes old must not refuse a meter
    made since, and the forwarder (with its bounded refresh) and Stripe judge them anyway.
    An AWS error is raised: a letter judged by the wrong keys would be refused."""
    catalog = store.read() if store is not None else None
    return rules.with_keys_of(catalog.meters) if catalog is not None else rules


def _assemble(parts: dict[int, Any]) -> MeterCatalog | None:
    if not parts or not all(isinstance(part, dict) for part in parts.values()):
        return None
    versions = {part.get("v") for part in parts.values()}
    counts = {part.get("n") for part in parts.values()}
    if len(versions) != 1 or len(counts) != 1:
        return None
    (count,) = counts
    if not isinstance(count, int) or set(parts) != set(range(count)):
        return None
    data = "".join(str(parts[i].get("d", "")) for i in range(count))
    try:
        text = zlib.decompress(base64.b64decode(data)).decode()
        catalog = MeterCatalog.from_text(text)
    except (ValueError, zlib.error, IndexError, TypeError):
        return None
    if hashlib.sha256(catalog.to_text().encode()).hexdigest()[:16] not in versions:
        return None
    return catalog


CATALOG_MAX_AGE = 300.0  # seconds: the refresher writes it every 5 minutes
CATALOG_REFRESH_INTERVAL = 60.0  # at most one refresh asked for a minute, per environment
CATALOG_WAIT = 5.0  # seconds at most that an invocation waits for a read or a refresh


class CatalogSource:
    """The forwarder's view of the catalog: kept in memory, read again when it is older than
    `max_age`. A read (or a refresh) runs on a worker thread of its own and an invocation
    waits for it at most `wait` seconds and the time it has left: SSM or the refresher being
    slow never carries the forwarder past its deadline (it goes on with the catalog it had).

    An event_name missing from the catalog may be a meter created a minute ago: `refreshed()`
    has the refresher read the account's meters again, at most once per invocation and once
    per `refresh_interval`, before such events are refused.
    """

    def __init__(
        self,
        store: CatalogStore,
        refresher: Callable[[], None] | None,
        *,
        max_age: float = CATALOG_MAX_AGE,
        refresh_interval: float = CATALOG_REFRESH_INTERVAL,
        wait: float = CATALOG_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._refresher = refresher
        self._max_age = max_age
        self._refresh_interval = refresh_interval
        self._wait = wait
        self._clock = clock
        self._catalog: MeterCatalog | None = None
        self._read_at = -math.inf
        self._refreshed_at = -math.inf
        self._refreshed_this_invocation = False
        self._time_left: Callable[[], float] = lambda: math.inf
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="catalog")
        self._pending: Future[MeterCatalog | None] | None = None
        self.reads = self.refreshes = 0
        self._refreshes_taken = 0

    def begin_invocation(self, time_left: Callable[[], float]) -> None:
        self._time_left = time_left
        self._refreshed_this_invocation = False

    def take_refreshes(self) -> int:
        """Refreshes asked of the refresher since the last call (for the metrics)."""
        count, self._refreshes_taken = self.refreshes - self._refreshes_taken, self.refreshes
        return count

    def current(self) -> MeterCatalog | None:
        """The catalog to judge a batch by (None: none stored yet, or none could be read)."""
        if self._clock() - self._read_at >= self._max_age:
            self._run(self._read)
        return self._catalog

    def refreshed(self) -> MeterCatalog | None:
        """A catalog the refresher has just made, or None when no refresh is allowed now (one
        per invocation, one per interval), none can be had, or it did not come in time."""
        if (
            self._refresher is None
            or self._refreshed_this_invocation
            or self._clock() - self._refreshed_at < self._refresh_interval
        ):
            return None
        self._refreshed_this_invocation = True
        self._refreshed_at = self._clock()
        before = self._catalog
        self._run(self._refresh)
        return self._catalog if self._catalog is not before else None

    def _run(self, work: Callable[[], MeterCatalog | None]) -> None:
        wait = min(self._wait, self._time_left())
        if wait <= 0:
            return
        if self._pending is None or self._pending.done():
            self._pending = self._worker.submit(work)
        try:
            catalog = self._pending.result(timeout=wait)
        except TimeoutError:
            logger.warning("the meter catalog did not come within %.1fs; going on without", wait)
            return
        except Exception as error:  # any failure: go on with what is known
            logger.warning("the meter catalog could not be read: %s", type(error).__name__)
            return
        if catalog is not None:
            self._catalog = catalog
        self._read_at = self._clock()

    def _read(self) -> MeterCatalog | None:
        self.reads += 1
        return self._store.read()

    def _refresh(self) -> MeterCatalog | None:
        assert self._refresher is not None
        self.refreshes += 1
        self._refresher()
        return self._read()
