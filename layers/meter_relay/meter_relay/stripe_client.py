"""Stripe's meter endpoints over one pooled keep-alive `requests.Session` per client.

Answers are classified, not raised: the caller decides to retry, refresh the session or
dead-letter from the `Kind`. Nothing here logs, and no secret or token is ever put in a
message or an exception.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from meter_relay.events import MeterEvent, stream_body

SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"
USER_AGENT = "meter-relay/0.1 (+python-requests)"
MAX_CONNECT_SECONDS = 3.05  # a new TLS connection to Stripe; most calls reuse a pooled one


class Kind(Enum):
    """What an answer means to the caller."""

    OK = "ok"
    SESSION_EXPIRED = "session_expired"  # 401 (expired or unknown token): new session, retry
    RATE_LIMITED = "rate_limited"  # 429: wait Retry-After (with jitter), then retry
    TRANSIENT = "transient"  # 5xx, timeout, dropped connection, not Stripe's answer: retry
    REJECTED = "rejected"  # 400: Stripe will not take this body as it is
    TOO_LARGE = "too_large"  # 413: a gateway on the way refuses a body this large
    FAILED = "failed"  # anything else (403, 404, ...): not the event's fault; retry later


@dataclass(frozen=True)
class StripeAnswer:
    kind: Kind
    status: int  # 0 when no HTTP answer came
    code: str | None = None
    message: str = ""
    retry_after: float | None = None
    body: dict[str, Any] | None = field(default=None, repr=False)  # may hold a session token
    elapsed: float = 0.0
    not_stripe: bool = False  # a 2xx whose body is not a JSON object: not Stripe's answer

    @property
    def error(self) -> str:
        """A short description for logs and dead letters (never contains credentials)."""
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {self.message}" if self.status else self.message


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its HTTP forms."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP-dates are GMT (naive would raise below)
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify(
    response: requests.Response, elapsed: float, *, empty_success: bool = False
) -> StripeAnswer:
    """Turn an HTTP answer into what the caller should do about it."""
    return classify_parts(
        response.status_code,
        response.reason,
        response.headers,
        response.content,
        elapsed,
        empty_success=empty_success,
    )


def classify_parts(
    status: int,
    reason: str | None,
    headers: Mapping[str, str],
    content: bytes,
    elapsed: float,
    *,
    empty_success: bool = False,
) -> StripeAnswer:
    """`classify` on an answer's parts, whichever HTTP layer read it. `empty_success`: the
    stream's success is exactly `{}`."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if 200 <= status < 300 and not (isinstance(body, dict) and not (empty_success and body)):
        # A proxy's page, an empty body, a wrong base URL, a stand-in's {"status": "ok"}:
        # Stripe's success is a JSON object ({} from the stream), and only that may count as
        # delivered.
        return StripeAnswer(
            Kind.TRANSIENT,
            status,
            None,
            f"HTTP {status} that is not Stripe's answer: {content[:64]!r}",
            elapsed=elapsed,
            not_stripe=True,
        )
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    message = str(error.get("message") or reason or "")[:500]
    if 200 <= status < 300:
        kind = Kind.OK
    elif status == 401:
        kind = Kind.SESSION_EXPIRED
    elif status == 429:
        kind = Kind.RATE_LIMITED
    elif status >= 500 or status == 409:
        kind = Kind.TRANSIENT
    elif status == 400:
        kind = Kind.REJECTED
    elif status == 413:
        kind = Kind.TOO_LARGE
    else:
        kind = Kind.FAILED
    return StripeAnswer(
        kind,
        status,
        code,
        message,
        _retry_after(headers.get("Retry-After")),
        body if isinstance(body, dict) else None,
        elapsed,
    )


class StripeHttp:
    """One base URL, one pooled keep-alive session, reused across invocations."""

    def __init__(self, base_url: str, api_version: str, *, pool_size: int = 8) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Stripe-Version": api_version})
        # Proxy and CA settings from the environment, read once here: with trust_env, requests
        # scans os.environ for them on every call (a tenth of a millisecond, per 100 events).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle
        self.session.trust_env = False
        self._direct_pool: urllib3.connectionpool.HTTPConnectionPool | None = None
        self._base_path = urlsplit(self.base_url).path  # a gateway's prefix, if any
        self._headers: dict[str, str] = {}

    def post_json(
        self,
        path: str,
        credential: str,
        body: Any,
        timeout: float,
        *,
        idempotency_key: str | None = None,
    ) -> StripeAnswer:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = _headers(credential, data)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return self._send("POST", path, headers, data, timeout)

    def post_pooled(self, path: str, credential: str, data: bytes, timeout: float) -> StripeAnswer:
        """A JSON body, already encoded, straight through the session's connection pool, for
        the hot path.

        requests' adapter holds a urllib3 pool per host; a call through `Session.request`
        costs twice the CPU of the pool's own `urlopen` (cookie jar, header merging, hooks,
        redirect handling, none of which the stream uses). Same connections, TLS settings and
        headers; a proxy, if one is configured, takes the full path instead.
        """
        headers = _headers(credential, data)
        pool = self._pool()
        if pool is None:
            return self._send("POST", path, headers, data, timeout, empty_success=True)
        connect, read = _split(timeout)
        started = time.perf_counter()
        try:
            response = pool.urlopen(
                "POST",
                f"{self._base_path}{path}",
                body=data,
                headers={**self._headers, **headers},
                timeout=urllib3.Timeout(connect=connect, read=read),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.NewConnectionError as error:  # a TimeoutError, for urllib3
            return StripeAnswer(
                Kind.TRANSIENT, 0, None, f"connection failed: {type(error).__name__}"
            )
        except urllib3.exceptions.TimeoutError:
            return StripeAnswer(Kind.TRANSIENT, 0, None, f"timed out after {timeout:.1f}s")
        except urllib3.exceptions.HTTPError as error:
            return StripeAnswer(
                Kind.TRANSIENT, 0, None, f"connection failed: {type(error).__name__}"
            )
        except Exception as error:  # its text may quote a header, credential and all
            return _not_sent(error)
        return classify_parts(
            response.status,
            response.reason,
            response.headers,
            response.data,
            time.perf_counter() - started,
            empty_success=True,  # the stream's success is {}
        )

    def _pool(self) -> urllib3.connectionpool.HTTPConnectionPool | None:
        """The pool requests itself would use for base_url, looked up once (None behind a
        proxy)."""
        if self._direct_pool is None and not self.session.proxies:
            adapter = self.session.get_adapter(self.base_url)
            assert isinstance(adapter, HTTPAdapter)
            probe = requests.Request("POST", self.base_url).prepare()
            pool = adapter.get_connection_with_tls_context(
                probe, self.session.verify, None, self.session.cert
            )
            assert isinstance(pool, urllib3.connectionpool.HTTPConnectionPool)
            # the headers first: another thread takes the pool as the sign that both are set
            self._headers = {name: str(value) for name, value in self.session.headers.items()}
            self._direct_pool = pool
        return self._direct_pool

    def get(
        self, path: str, credential: str, params: dict[str, Any], timeout: float
    ) -> StripeAnswer:
        headers = {"Authorization": f"Bearer {credential}"}
        return self._send("GET", path, headers, None, timeout, params)

    def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        data: bytes | None,
        timeout: float,
        params: dict[str, Any] | None = None,
        *,
        empty_success: bool = False,
    ) -> StripeAnswer:
        started = time.perf_counter()
        try:
            response = self.session.request(
                method,
                f"{self.base_url}{path}",
                headers=headers,
                data=data,
                params=params,
                timeout=_split(timeout),
            )
        except requests.Timeout:
            return StripeAnswer(Kind.TRANSIENT, 0, None, f"timed out after {timeout:.1f}s")
        except requests.RequestException as error:
            return StripeAnswer(
                Kind.TRANSIENT, 0, None, f"connection failed: {type(error).__name__}"
            )
        except Exception as error:  # its text may quote a header, credential and all
            return _not_sent(error)
        return classify(response, time.perf_counter() - started, empty_success=empty_success)

    def close(self) -> None:
        self.session.close()


def _not_sent(error: Exception) -> StripeAnswer:
    """The request could not even be sent (e.g. http.client's ValueError for a header value
    with a line break, whose text quotes the header, credential included): named by type."""
    return StripeAnswer(
        Kind.TRANSIENT, 0, None, f"the request was not sent: {type(error).__name__}"
    )


def _headers(credential: str, data: bytes | None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {credential}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    return headers


def _split(timeout: float) -> tuple[float, float]:
    """A call's whole budget as (connect, read): requests and urllib3 apply a single number to
    connecting and to reading each, which could take twice as long."""
    connect = min(MAX_CONNECT_SECONDS, timeout / 3)
    return connect, timeout - connect


def error_param(answer: StripeAnswer) -> str | None:
    """The parameter Stripe names in an error, if it names one."""
    error = (answer.body or {}).get("error")
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def _about_the_events(answer: StripeAnswer) -> bool:
    """A 400 is the events' fault unless Stripe names a parameter outside them (a header, a
    field of the request itself), or it is not Stripe's answer at all (a proxy's or a
    firewall's page: no `{"error": {"type": ...}}`; Stripe's `code` may be null, its `type`
    is always there), which says nothing of the events."""
    error = (answer.body or {}).get("error")
    if not isinstance(error, dict) or not (
        isinstance(error.get("type"), str) or isinstance(error.get("code"), str)
    ):
        return False
    param = error_param(answer)
    return param is None or param == "events" or param.startswith("events[")


def cancel_key(run: str, event_name: str, identifier: str) -> str:
    """The Idempotency-Key of one run's cancel of one event: the same on each of its attempts,
    not across runs (an identifier Stripe counted again after 24 hours is cancelled anew)."""
    digest = hashlib.sha256(f"{run}\0{event_name}\0{identifier}".encode()).hexdigest()
    return f"meter-relay-cancel-{digest[:40]}"


class MeterEventStream:
    """POST /v2/billing/meter_event_stream on the meter events host, with a session token."""

    PATH = "/v2/billing/meter_event_stream"

    def __init__(self, http: StripeHttp) -> None:
        self.http = http

    def send(self, token: str, events: Sequence[MeterEvent], timeout: float) -> StripeAnswer:
        """One call (an event received in Stripe's form goes with its own text)."""
        return self.post(token, self.body(events), timeout)

    def body(self, events: Sequence[MeterEvent]) -> bytes:
        """A call's body, `{"events": [...]}`: events.stream_body."""
        return stream_body(events)

    def post(self, token: str, body: bytes, timeout: float) -> StripeAnswer:
        """One call of a body already made (`body`)."""
        return self.blame(self.http.post_pooled(self.PATH, token, body, timeout))

    @staticmethod
    def blame(answer: StripeAnswer) -> StripeAnswer:
        """A 400 that names a parameter outside the events, or that is not Stripe's, is the
        request's fault, not theirs: splitting the call would dead-letter every event, so it
        is a failure to retry later."""
        if answer.kind is Kind.REJECTED and not _about_the_events(answer):
            return replace(answer, kind=Kind.FAILED)
        return answer


class StripeApi:
    """Calls made with the secret key on the API host (sessions; sync events and cancels)."""

    def __init__(self, http: StripeHttp, secret_key: str) -> None:
        self.http = http
        self._secret_key = secret_key

    def __repr__(self) -> str:
        return f"StripeApi({self.http.base_url!r}, secret_key=<hidden>)"

    def get(self, path: str, params: dict[str, Any], timeout: float) -> StripeAnswer:
        """A GET with the secret key (v2 events: /v2/core/events and /v2/core/events/{id})."""
        return self.http.get(path, self._secret_key, params, timeout)

    def create_session(self, timeout: float) -> StripeAnswer:
        return self.http.post_json(
            "/v2/billing/meter_event_session", self._secret_key, None, timeout
        )

    def list_meters(self, params: dict[str, Any], timeout: float) -> StripeAnswer:
        """GET /v1/billing/meters: one page of the account's meters."""
        return self.http.get("/v1/billing/meters", self._secret_key, params, timeout)

    def create_meter_event(self, event: dict[str, Any], timeout: float) -> StripeAnswer:
        return self.http.post_json("/v2/billing/meter_events", self._secret_key, event, timeout)

    def cancel_meter_event(
        self,
        event_name: str,
        identifier: str,
        timeout: float,
        *,
        idempotency_key: str | None = None,
    ) -> StripeAnswer:
        """A cancel; under an Idempotency-Key (cancel_key), a retry after an answer that was
        lost (a timeout, a reset) gets Stripe's first answer, not a refusal as a second cancel
        (which would go unrecorded in the ledger)."""
        body = {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}
        return self.http.post_json(
            "/v2/billing/meter_event_adjustments",
            self._secret_key,
            body,
            timeout,
            idempotency_key=idempotency_key,
        )
