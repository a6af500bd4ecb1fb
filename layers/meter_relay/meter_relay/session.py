"""The meter event session token: stored in SSM, cached by the forwarder, renewed by the refresher.

The forwarder never holds the secret key. It reads the SecureString parameter (token, session
id, expires_at, livemode) once, keeps it in memory across invocations, and reads it again only
when it nears `expires_at` or Stripe says it expired; if the parameter is stale too, it asks the
refresher function to renew it. The refresher is the only one that creates sessions.

A session is used only in the stack's StripeMode: a live stack holding a test-mode session
would stream usage that Stripe answers 200 and never bills.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from aws_lambda_powertools.utilities.parameters import SSMProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import BotoCoreError, ClientError

from meter_relay.config import StripeMode
from meter_relay.events import format_timestamp, parse_rfc3339
from meter_relay.secret_key import key_fingerprint
from meter_relay.stripe_client import Kind, StripeApi

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_ssm import SSMClient

# What an Authorization header can carry: a token with a line break or a space in it would make
# the HTTP layer raise an error quoting the whole header (the token with it).
_TOKEN_TEXT = re.compile(r"[!-~]+\Z")


class SessionUnavailable(Exception):
    """No live session token could be had; the events wait in the queue for a later try."""


class SessionModeMismatch(SessionUnavailable):
    """The only session to be had is not in the stack's StripeMode: it is never used."""


class SessionFormatError(ValueError):
    """The parameter does not hold a session as the refresher writes it."""


class RefreshError(Exception):
    """Stripe or the network refused a new session. The message names no secret."""


class RefreshModeError(RefreshError):
    """The key, or the session Stripe made with it, is not in the stack's StripeMode."""


class KeyUnreadable(RefreshError):
    """The secret could not be read (Secrets Manager throttled or down): nothing is known of
    the key."""


def mode_of(livemode: bool | None) -> str:
    return "unknown" if livemode is None else ("live" if livemode else "test")


@dataclass(frozen=True)
class MeterEventSession:
    session_id: str
    expires_at: datetime
    token: str = field(repr=False)  # never in a repr, a log line or an exception
    livemode: bool | None = None  # None: written before sessions recorded their mode
    key_fingerprint: str | None = None  # secret_key.key_fingerprint of the key that made it

    def seconds_left(self, now: float) -> float:
        return self.expires_at.timestamp() - now

    def in_mode(self, mode: StripeMode) -> bool:
        return self.livemode is (mode == "live")

    def to_parameter_value(self) -> str:
        return json.dumps(
            {
                "token": self.token,
                "session_id": self.session_id,
                "expires_at": format_timestamp(self.expires_at),
                "livemode": self.livemode,
                "key_fingerprint": self.key_fingerprint,
            }
        )

    @classmethod
    def from_parameter_value(cls, text: str) -> MeterEventSession:
        try:
            data = json.loads(text)
            expires_at = parse_rfc3339(data["expires_at"])
            token, session_id = data["token"], data["session_id"]
            livemode = data.get("livemode")
            fingerprint = data.get("key_fingerprint")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise SessionFormatError("the session parameter is not the refresher's JSON") from None
        if (
            expires_at is None
            or not isinstance(token, str)
            or not isinstance(session_id, str)
            or not (livemode is None or isinstance(livemode, bool))
        ):
            raise SessionFormatError("the session parameter is not the refresher's JSON")
        if not isinstance(fingerprint, str):
            fingerprint = None  # written before sessions recorded their key: replaced once
        return cls(session_id, expires_at, _checked_token(token), livemode, fingerprint)

    @classmethod
    def from_stripe(cls, body: dict[str, Any]) -> MeterEventSession:
        """From a `v2.billing.meter_event_session` object."""
        expires_at = parse_rfc3339(str(body.get("expires_at", "")))
        token, session_id = body.get("authentication_token"), body.get("id")
        livemode = body.get("livemode")
        if (
            expires_at is None
            or not isinstance(token, str)
            or not isinstance(session_id, str)
            or not isinstance(livemode, bool)
        ):
            raise RefreshError("Stripe answered the session request with an unexpected object")
        try:
            return cls(session_id, expires_at, _checked_token(token), livemode)
        except SessionFormatError:
            raise RefreshError(
                "Stripe answered the session request with an unusable token"
            ) from None


def _checked_token(token: str) -> str:
    """The token without surrounding whitespace (a value pasted by hand may end in a line
    break); anything else that cannot go in a header is refused, without quoting it."""
    token = token.strip()
    if not _TOKEN_TEXT.match(token):
        raise SessionFormatError("the session token holds characters a header cannot carry")
    return token


class SessionStore:
    """The SecureString parameter, read through Powertools (decrypted), written with boto3."""

    def __init__(self, name: str, ssm: SSMClient) -> None:
        self.name = name
        self._ssm = ssm
        self._provider = SSMProvider(boto3_client=ssm)

    def read(self) -> MeterEventSession | None:
        """The stored session, or None when the parameter does not exist yet."""
        try:
            value = self._provider.get(self.name, decrypt=True, force_fetch=True)
        except GetParameterError as error:
            if "ParameterNotFound" in str(error):
                return None
            raise
        return MeterEventSession.from_parameter_value(str(value))

    def write(self, session: MeterEventSession) -> None:
        self._ssm.put_parameter(
            Name=self.name,
            Value=session.to_parameter_value(),
            Type="SecureString",
            Overwrite=True,
            Description="Stripe meter event session (written by Meter Relay's refresher)",
        )


MIN_RENEWAL_WAIT = 1.0  # seconds: with less time left, no renewal is even started
MIN_FRESH_SECONDS = 5.0  # a session the refresher has just made is used if it lives this long
FALLBACK_SECONDS = 15.0  # a cached session is used while its renewal fails if it lives this long


class LambdaRefresher:
    """Asks the refresher function, synchronously, to replace a session that went stale."""

    def __init__(self, function_name: str, client: LambdaClient) -> None:
        self.function_name = function_name
        self._client = client

    def __call__(self, stale_session_id: str | None) -> None:
        """Only the session: the forwarder waits, so the refresher skips the meter catalog."""
        payload: dict[str, Any] = {"session_only": True}
        if stale_session_id:
            payload["replace_session_id"] = stale_session_id
        self._invoke(payload)

    def refresh_catalog(self) -> None:
        """Have the meter catalog read again now (an event_name the catalog lacks)."""
        self._invoke({"refresh_catalog": True})

    def _invoke(self, payload: dict[str, Any]) -> None:
        try:
            response = self._client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=json.dumps(payload).encode(),
            )
        except (BotoCoreError, ClientError) as error:
            raise SessionUnavailable(f"the refresher could not be invoked: {error}") from None
        if response.get("FunctionError"):
            detail = response["Payload"].read()[:300].decode("utf-8", "replace")
            raise SessionUnavailable(f"the refresher failed: {detail}")


@dataclass
class TokenStats:
    """What the token source cost one invocation (for its metrics)."""

    parameter_reads: int = 0
    refresher_calls: int = 0
    mode_mismatches: int = 0  # stored sessions refused for not being in the stack's mode
    renewals_failed: int = 0  # renewals that failed while the cached session was still used


class SessionTokenSource:
    """The forwarder's view of the session: cached, re-read before it expires, healed on 401.

    A renewal (an SSM read, perhaps the refresher, perhaps a second read) runs on a worker
    thread of its own, and callers wait for it at most `time_left()` seconds (given per
    invocation by `begin_invocation`): SSM or the refresher being slow must not carry the
    forwarder past its deadline. A renewal that outlasts the wait goes on in the background;
    its session serves the next invocation, which waits for it rather than starting another.
    A stored session not in the stack's `mode` is never used: the refresher is asked for one
    that is, and until it has one the events wait in the queue.
    """

    def __init__(
        self,
        store: SessionStore,
        refresher: Callable[[str | None], None] | None,
        margin: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        mode: StripeMode = "test",
    ) -> None:
        self._store = store
        self._refresher = refresher
        self._margin = margin
        self._clock = clock
        self._mode: StripeMode = mode
        self._time_left: Callable[[], float] | None = None
        self._cached: MeterEventSession | None = None
        self._renewal_failed = False
        self._unreadable: str | None = None  # why the last read found no usable value
        self._renewing: Future[MeterEventSession] | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="session")
        self._lock = threading.Lock()
        self._stats = TokenStats()

    def begin_invocation(self, time_left: Callable[[], float] | None = None) -> None:
        """A new invocation: renewals wait at most `time_left()` seconds, and may be tried
        again even if one failed in the last invocation."""
        self._time_left = time_left
        self._renewal_failed = False

    def take_stats(self) -> TokenStats:
        """What the token source did since the last call (reads, refresher calls, refusals)."""
        stats, self._stats = self._stats, TokenStats()
        return stats

    def current(self) -> MeterEventSession:
        """A session good for at least `margin` seconds; no SSM call while the cache is.

        If the renewal fails (SSM throttled, the refresher down), a cached session that still
        lives `FALLBACK_SECONDS` is used meanwhile: it is good, and dropping it would send the
        batch back to wait out its visibility timeout."""
        cached = self._cached
        if cached is not None and cached.seconds_left(self._clock()) > self._margin:
            return cached
        with self._lock:
            cached = self._cached
            if cached is not None and cached.seconds_left(self._clock()) > self._margin:
                return cached
            failed_before = self._renewal_failed
            try:
                return self._renew(refused=None)
            except SessionUnavailable:
                if cached is None or cached.seconds_left(self._clock()) <= FALLBACK_SECONDS:
                    raise
                if not failed_before:
                    self._stats.renewals_failed += 1  # once per failed renewal, not per call
                return cached

    def expired(self, session: MeterEventSession) -> MeterEventSession:
        """Stripe refused `session`: get another one (once for all threads that saw it fail).
        A refused session is dropped from the cache if no other comes: never used again, not
        even as `current()`'s stand-in while renewals fail."""
        with self._lock:
            cached = self._cached
            if cached is not None and cached.session_id != session.session_id:
                return cached  # another thread already replaced it
            try:
                renewed = self._renew(refused=session)
                if renewed.session_id == session.session_id:
                    # it joined a renewal begun before the refusal, which took the stored
                    # session as it was: one more, that knows what Stripe refused
                    renewed = self._renew(refused=session)
                return renewed
            except SessionUnavailable:
                if self._cached is not None and self._cached.session_id == session.session_id:
                    self._cached = None
                raise

    def _renew(self, refused: MeterEventSession | None) -> MeterEventSession:
        """Re-read the parameter; if that is stale too, have the refresher replace it.

        A failed renewal is remembered until `begin_invocation()`: during an outage every chunk
        of a big batch then fails at once, instead of each asking SSM and the refresher again.
        """
        if self._renewal_failed:
            raise SessionUnavailable("a session renewal already failed in this invocation")
        try:
            return self._renew_within_time_left(refused)
        except SessionUnavailable:
            self._renewal_failed = True
            raise

    def _renew_within_time_left(self, refused: MeterEventSession | None) -> MeterEventSession:
        wait = self._time_left() if self._time_left is not None else None
        if wait is not None and wait < MIN_RENEWAL_WAIT:
            raise SessionUnavailable("no time left in this invocation to renew the session")
        if self._renewing is None or self._renewing.done():
            self._renewing = self._worker.submit(self._renew_now, refused)
        try:
            return self._renewing.result(timeout=wait)
        except TimeoutError:
            raise SessionUnavailable(
                f"the session renewal did not finish within {wait:.1f}s"
            ) from None

    def _renew_now(self, refused: MeterEventSession | None) -> MeterEventSession:
        stored = self._read()
        if not self._usable(stored, refused, self._margin):
            if self._refresher is None:
                self._raise_unusable(stored, "no refresher is set")
            self._stats.refresher_calls += 1
            self._refresher(stored.session_id if stored is not None else None)
            stored = self._read()
            # Just made: usable even if its whole life is shorter than the margin.
            if not self._usable(stored, refused, MIN_FRESH_SECONDS):
                self._raise_unusable(stored, "the refresher ran")
        assert stored is not None
        self._cached = stored
        return stored

    def _raise_unusable(self, stored: MeterEventSession | None, after: str) -> NoReturn:
        if stored is None and self._unreadable is not None:
            raise SessionUnavailable(f"{self._unreadable} ({after})")
        if stored is not None and not stored.in_mode(self._mode):
            raise SessionModeMismatch(
                f"the stored session is in {mode_of(stored.livemode)} mode and this stack's "
                f"StripeMode is {self._mode} ({after}): it is not used"
            )
        raise SessionUnavailable(f"the stored session is stale ({after})")

    def _read(self) -> MeterEventSession | None:
        """The stored session; None when there is none or it is not the refresher's JSON (the
        refresher writes over such a value, so it is asked to, as for a missing one)."""
        self._stats.parameter_reads += 1
        self._unreadable = None
        try:
            return self._store.read()
        except SessionFormatError as error:
            self._unreadable = str(error)  # said if no session comes of asking the refresher
            return None
        except GetParameterError as error:
            raise SessionUnavailable(f"cannot read the session parameter: {error}") from None

    def _usable(
        self, stored: MeterEventSession | None, refused: MeterEventSession | None, margin: float
    ) -> bool:
        if stored is None or stored.seconds_left(self._clock()) <= margin:
            return False
        if not stored.in_mode(self._mode):
            self._stats.mode_mismatches += 1
            return False
        # The session Stripe just refused is no good, whatever its expires_at says.
        return refused is None or stored.session_id != refused.session_id


@dataclass(frozen=True)
class RefreshSummary:
    """What the refresher did; deliberately without the token."""

    refreshed: bool
    reason: str
    session_id: str
    expires_at: str
    seconds_left: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "refreshed": self.refreshed,
            "reason": self.reason,
            "session_id": self.session_id,
            "expires_at": self.expires_at,
            "seconds_left": round(self.seconds_left, 1),
        }


def refresh_session(
    store: SessionStore,
    secret_key: Callable[[bool], str],
    api_for: Callable[[str], StripeApi],
    *,
    margin: float,
    mode: StripeMode,
    force: bool = False,
    replace_session_id: str | None = None,
    timeout: float = 10.0,
    now: Callable[[], float] = time.time,
) -> RefreshSummary:
    """Create a session when the stored one is missing, near expiry, refused, not in the
    stack's `mode`, made with another key, or forced. A new session not in `mode` is never
    stored. `secret_key(fresh)` gives the key, read past its cache when `fresh`: a session is
    replaced, and made, only by the key as the secret holds it now (this environment's cached
    one may be older than the one another environment just made a session with)."""
    key, fresh = secret_key(force), force
    try:
        stored: MeterEventSession | None = store.read()
    except SessionFormatError:
        stored, unreadable = None, True
    else:
        unreadable = False

    def why(key: str) -> str | None:
        return _why_replace(
            stored, unreadable, key_fingerprint(key), force, mode, replace_session_id, margin, now()
        )

    reason = why(key)
    if reason is not None and not fresh:
        try:
            key = secret_key(True)
        except KeyUnreadable:
            # Secrets Manager is down: if nothing points to a rotation (the stored session is
            # this key's), the cached key serves, as it did before the fresh read
            if stored is None or stored.key_fingerprint != key_fingerprint(key):
                raise
        reason = why(key)
    if reason is None:
        assert stored is not None
        return RefreshSummary(
            False,
            "still valid",
            stored.session_id,
            format_timestamp(stored.expires_at),
            stored.seconds_left(now()),
        )
    api = api_for(key)
    answer = api.create_session(timeout)
    if answer.kind is not Kind.OK or answer.body is None:
        raise RefreshError(f"Stripe refused a new meter event session: {answer.error}")
    session = replace(
        MeterEventSession.from_stripe(answer.body), key_fingerprint=key_fingerprint(key)
    )
    if not session.in_mode(mode):
        raise RefreshModeError(
            f"Stripe made a {mode_of(session.livemode)}-mode session with the stack's key, but "
            f"its StripeMode is {mode}: the session is not stored (set the key of the right "
            "mode in the secret, or deploy with the key's StripeMode)"
        )
    store.write(session)
    return RefreshSummary(
        True,
        reason,
        session.session_id,
        format_timestamp(session.expires_at),
        session.seconds_left(now()),
    )


def _why_replace(
    stored: MeterEventSession | None,
    unreadable: bool,
    fingerprint: str,
    force: bool,
    mode: StripeMode,
    replace_session_id: str | None,
    margin: float,
    now: float,
) -> str | None:
    """Why the stored session must be replaced, or None when it serves."""
    if stored is None:
        return "the stored value is unreadable" if unreadable else "no stored session"
    if force:
        return "forced"
    if not stored.in_mode(mode):
        return f"the stored session is in {mode_of(stored.livemode)} mode, not {mode}"
    if stored.key_fingerprint != fingerprint:
        if stored.key_fingerprint:
            return "it was made with another key"
        return "the key that made it is not recorded"
    if replace_session_id is not None and stored.session_id == replace_session_id:
        return "the forwarder reported it expired"
    if stored.seconds_left(now) <= margin:
        return f"expires within {margin:.0f}s"
    return None
