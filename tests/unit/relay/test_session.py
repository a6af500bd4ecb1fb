"""The forwarder's session token source without AWS: caching, renewal, and its time bound."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from meter_relay.config import StripeMode
from meter_relay.secret_key import key_fingerprint
from meter_relay.session import (
    KeyUnreadable,
    MeterEventSession,
    SessionFormatError,
    SessionModeMismatch,
    SessionStore,
    SessionTokenSource,
    SessionUnavailable,
    refresh_session,
)
from meter_relay.stripe_client import Kind, StripeAnswer, StripeApi

NOW = 1_800_000_000.0


def session(name: str, lives: float, livemode: bool | None = False) -> MeterEventSession:
    expires = datetime.fromtimestamp(NOW + lives, UTC)
    return MeterEventSession(f"mtres_{name}", expires, f"token_{name}", livemode)


class FakeStore:
    """The SSM parameter: what `read()` gives, with an optional gate that holds reads."""

    def __init__(self, *stored: MeterEventSession | Exception | None) -> None:
        self.stored = list(stored)
        self.reads = 0
        self.gate: threading.Event | None = None

    def read(self) -> MeterEventSession | None:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.reads += 1
        found = self.stored[min(self.reads, len(self.stored)) - 1]
        if isinstance(found, Exception):
            raise found
        return found


class FakeRefresher:
    def __init__(self, store: FakeStore, makes: MeterEventSession | None) -> None:
        self.store = store
        self.makes = makes
        self.asked: list[str | None] = []

    def __call__(self, stale_session_id: str | None) -> None:
        self.asked.append(stale_session_id)
        if self.makes is None:
            raise SessionUnavailable("the refresher failed: Stripe refused a new session")
        self.store.stored.append(self.makes)


def source(
    store: FakeStore,
    refresher: FakeRefresher | None = None,
    margin: float = 60.0,
    mode: StripeMode = "test",
) -> SessionTokenSource:
    return SessionTokenSource(
        cast("SessionStore", store), refresher, margin, clock=lambda: NOW, mode=mode
    )


def test_a_cached_session_is_read_once_for_many_calls() -> None:
    store = FakeStore(session("a", 900))
    tokens = source(store)
    assert {tokens.current().session_id for _ in range(50)} == {"mtres_a"}
    assert store.reads == 1
    assert tokens.take_stats().parameter_reads == 1
    assert tokens.take_stats().parameter_reads == 0  # taken: the next invocation starts at 0


def test_a_cached_session_near_its_end_is_read_again() -> None:
    store = FakeStore(session("a", 900), session("b", 1800))
    now = [NOW]
    tokens = SessionTokenSource(cast("SessionStore", store), None, 60, clock=lambda: now[0])
    assert tokens.current().session_id == "mtres_a"
    now[0] = NOW + 800  # a has 100 s left: still beyond the 60 s margin
    assert tokens.current().session_id == "mtres_a"
    now[0] = NOW + 850  # 50 s left: read the parameter again, before Stripe refuses it
    assert tokens.current().session_id == "mtres_b"
    assert store.reads == 2


def test_a_refused_session_asks_the_refresher_for_another_once() -> None:
    store = FakeStore(session("a", 900))
    refresher = FakeRefresher(store, session("b", 900))
    tokens = source(store, refresher)
    first = tokens.current()

    renewed = tokens.expired(first)
    again = tokens.expired(first)  # another thread saw the same 401: no second renewal

    assert renewed.session_id == again.session_id == "mtres_b"
    assert refresher.asked == ["mtres_a"]
    assert tokens.take_stats().refresher_calls == 1


def test_a_failed_renewal_is_not_retried_in_the_same_invocation() -> None:
    store = FakeStore(session("a", 10))
    refresher = FakeRefresher(store, makes=None)
    tokens = source(store, refresher)
    with pytest.raises(SessionUnavailable, match="Stripe refused"):
        tokens.current()
    reads = store.reads
    with pytest.raises(SessionUnavailable, match="already failed"):
        tokens.current()
    assert store.reads == reads  # no second SSM read, no second refresher call
    assert len(refresher.asked) == 1

    refresher.makes = session("b", 900)
    tokens.begin_invocation()
    assert tokens.current().session_id == "mtres_b"


def test_no_refresher_and_a_stale_parameter_is_unavailable() -> None:
    tokens = source(FakeStore(session("a", 10)))
    with pytest.raises(SessionUnavailable, match="no refresher"):
        tokens.current()


def test_a_slow_renewal_is_cut_at_time_left_and_serves_the_next_invocation() -> None:
    store = FakeStore(session("a", 900))
    store.gate = threading.Event()  # SSM does not answer
    tokens = source(store)
    tokens.begin_invocation(time_left=lambda: 1.2)
    with pytest.raises(SessionUnavailable, match=r"did not finish within 1\.2s"):
        tokens.current()
    assert store.reads == 0

    store.gate.set()  # SSM answers at last: the renewal finishes in the background
    tokens.begin_invocation(time_left=lambda: 30)
    assert tokens.current().session_id == "mtres_a"
    assert store.reads == 1  # the next invocation took that renewal's result, no second read


def test_with_too_little_time_left_no_renewal_starts() -> None:
    store = FakeStore(session("a", 900))
    tokens = source(store)
    tokens.begin_invocation(time_left=lambda: 0.5)
    with pytest.raises(SessionUnavailable, match="no time left"):
        tokens.current()
    assert store.reads == 0


def test_a_session_just_made_is_used_even_if_shorter_than_the_margin() -> None:
    store = FakeStore(None)
    refresher = FakeRefresher(store, session("short", 30))
    tokens = source(store, refresher, margin=60)
    assert tokens.current().session_id == "mtres_short"
    assert refresher.asked == [None]


def test_the_session_shows_no_token_in_its_repr() -> None:
    made = session("a", 900)
    assert "token_a" not in repr(made)
    assert made.seconds_left(NOW) == pytest.approx(timedelta(seconds=900).total_seconds())


# ----- the stack's Stripe mode ----------------------------------------------------------------


@pytest.mark.parametrize(("mode", "livemode"), [("live", False), ("test", True), ("live", None)])
def test_a_stored_session_of_another_mode_is_never_used(
    mode: StripeMode, livemode: bool | None
) -> None:
    """Stripe answers 200 to a live stack streaming with a test-mode token and never bills
    it: such a session, or one whose mode is unknown, is refused; the refresher is asked for
    one in the stack's mode, and while none comes the events stay in the queue."""
    store = FakeStore(session("other", 900, livemode))
    refresher = FakeRefresher(store, session("still_other", 900, livemode))
    tokens = source(store, refresher, mode=mode)

    with pytest.raises(SessionModeMismatch, match=f"StripeMode is {mode}"):
        tokens.current()

    assert refresher.asked == ["mtres_other"]
    assert tokens.take_stats().mode_mismatches == 2  # the stored one, then the refresher's
    assert issubclass(SessionModeMismatch, SessionUnavailable)


def test_the_refresher_replacing_a_session_of_another_mode_heals_it() -> None:
    store = FakeStore(session("written_before_modes", 900, livemode=None))
    refresher = FakeRefresher(store, session("live", 900, livemode=True))
    tokens = source(store, refresher, mode="live")

    assert tokens.current().session_id == "mtres_live"
    assert tokens.take_stats().mode_mismatches == 1


@pytest.mark.parametrize("token", ["token_abc\n", "  token_abc", "token_abc\r\n"])
def test_a_stored_token_with_surrounding_whitespace_is_stripped(token: str) -> None:
    value = json.dumps(
        {"token": token, "session_id": "s", "expires_at": "2027-01-01T00:00:00Z", "livemode": False}
    )
    assert MeterEventSession.from_parameter_value(value).token == "token_abc"


@pytest.mark.parametrize("token", ["token\nabc", "token abc", "tokén", "", "token\x00"])
def test_a_stored_token_that_cannot_go_in_a_header_is_refused_without_quoting_it(
    token: str,
) -> None:
    value = json.dumps({"token": token, "session_id": "s", "expires_at": "2027-01-01T00:00:00Z"})
    with pytest.raises(SessionFormatError) as raised:
        MeterEventSession.from_parameter_value(value)
    assert token.strip() not in str(raised.value) or not token.strip()


def test_the_stored_value_keeps_the_sessions_mode() -> None:
    for livemode in (True, False):
        made = session("a", 900, livemode)
        assert MeterEventSession.from_parameter_value(made.to_parameter_value()) == made


# ----- when the renewal fails -----------------------------------------------------------------


def _throttled() -> GetParameterError:
    return GetParameterError("An error occurred (ThrottlingException) when calling GetParameter")


def test_a_failed_re_read_keeps_the_cached_session_while_it_lives() -> None:
    """Every environment re-reads the same stored session at about the same moment; one whose
    read SSM throttles keeps a session that is still good instead of failing its batch."""
    store = FakeStore(session("a", 900), _throttled())
    now = [NOW]
    tokens = SessionTokenSource(cast("SessionStore", store), None, 60, clock=lambda: now[0])
    assert tokens.current().session_id == "mtres_a"

    now[0] = NOW + 850  # 50 s left: within the margin, so read again; SSM refuses
    assert tokens.current().session_id == "mtres_a"
    assert tokens.current().session_id == "mtres_a"  # the next chunk too, no second read
    assert store.reads == 2
    assert tokens.take_stats().renewals_failed == 1  # one renewal failed, used twice

    now[0] = NOW + 890  # 10 s left: too little to start a call with it
    with pytest.raises(SessionUnavailable, match="already failed"):
        tokens.current()


def test_a_failed_re_read_with_nothing_cached_is_unavailable() -> None:
    tokens = source(FakeStore(_throttled()))
    with pytest.raises(SessionUnavailable, match="cannot read the session parameter"):
        tokens.current()
    assert tokens.take_stats().renewals_failed == 0


def test_a_parameter_that_is_not_the_refreshers_json_asks_the_refresher() -> None:
    """The refresher writes over such a value: the forwarder asks for it at once, as for a
    missing parameter, instead of waiting for the next scheduled run."""
    store = FakeStore(SessionFormatError("the session parameter is not the refresher's JSON"))
    refresher = FakeRefresher(store, session("b", 900))
    tokens = source(store, refresher)
    assert tokens.current().session_id == "mtres_b"
    assert refresher.asked == [None]


def test_the_stored_value_keeps_the_key_fingerprint() -> None:
    made = replace(session("a", 900), key_fingerprint="0123456789abcdef")
    assert MeterEventSession.from_parameter_value(made.to_parameter_value()) == made
    written_before = json.loads(made.to_parameter_value())
    del written_before["key_fingerprint"]
    read = MeterEventSession.from_parameter_value(json.dumps(written_before))
    assert read.key_fingerprint is None


@pytest.mark.parametrize("left", [50.0, 300.0])
def test_a_session_stripe_refused_is_not_used_while_its_renewal_fails(left: float) -> None:
    """Within the margin (50 s left) it would be current()'s stand-in; beyond it (300 s) it
    would simply be served from the cache: either way every call with it is refused."""
    store = FakeStore(session("a", 900), _throttled())
    now = [NOW]
    tokens = SessionTokenSource(cast("SessionStore", store), None, 60, clock=lambda: now[0])
    refused = tokens.current()
    now[0] = NOW + 900 - left
    with pytest.raises(SessionUnavailable):
        tokens.expired(refused)  # Stripe answered 401; SSM then refuses the re-read
    with pytest.raises(SessionUnavailable, match="already failed"):
        tokens.current()  # not mtres_a again


def test_a_refusal_that_joins_a_renewal_begun_before_it_gets_another_session() -> None:
    """A renewal that outlasted its invocation's wait is still reading the stored session when
    Stripe refuses it: that renewal knows nothing of the refusal and brings the same session
    back, so the refusal starts one more, which asks the refresher."""
    store = FakeStore(session("a", 900))
    store.gate = threading.Event()  # SSM is slow
    refresher = FakeRefresher(store, session("b", 900))
    tokens = source(store, refresher)
    tokens.begin_invocation(time_left=lambda: 1.2)
    with pytest.raises(SessionUnavailable, match="did not finish"):
        tokens.current()  # the renewal goes on in the background
    tokens.begin_invocation(time_left=lambda: 30)
    threading.Timer(0.3, store.gate.set).start()  # SSM answers while the refusal waits
    assert tokens.expired(session("a", 900)).session_id == "mtres_b"
    assert refresher.asked == ["mtres_a"]


# ----- the refresher's key ----------------------------------------------------------------------


class WritableStore(FakeStore):
    def write(self, made: MeterEventSession) -> None:
        self.stored.append(made)

    @property
    def written(self) -> MeterEventSession:
        last = self.stored[-1]
        assert isinstance(last, MeterEventSession)
        return last


class SessionsApi:
    def create_session(self, timeout: float) -> StripeAnswer:
        expires = datetime.fromtimestamp(NOW + 900, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        body = {"id": "mtres_new", "authentication_token": "tok", "expires_at": expires}
        return StripeAnswer(Kind.OK, 200, body={**body, "livemode": False})


def _secret(cached: str, fresh: str | Exception) -> Callable[[bool], str]:
    def read(past_cache: bool) -> str:
        if not past_cache:
            return cached
        if isinstance(fresh, Exception):
            raise fresh
        return fresh

    return read


def _refresh(store: WritableStore, secret: Callable[[bool], str]) -> str:
    summary = refresh_session(
        cast("SessionStore", store),
        secret,
        lambda key: cast("StripeApi", SessionsApi()),
        margin=420,
        mode="test",
        now=lambda: NOW,
    )
    return summary.reason if summary.refreshed else "still valid"


def test_a_session_is_made_with_the_key_the_secret_holds_now() -> None:
    """The renewal reads the secret past this environment's cache: another may have just made
    a session with a newer key, which the cached one must not replace."""
    old, new = "sk_test_old", "sk_test_new"
    stored = replace(session("a", 300), key_fingerprint=key_fingerprint(new))
    store = WritableStore(stored)
    assert _refresh(store, _secret(cached=old, fresh=new)) == "expires within 420s"
    assert store.written.key_fingerprint == key_fingerprint(new)


def test_secrets_manager_down_renews_with_the_cached_key_if_nothing_points_to_a_rotation() -> None:
    key = "sk_test_same"
    down = KeyUnreadable("cannot read the Stripe secret key from s: ThrottlingException")
    store = WritableStore(replace(session("a", 300), key_fingerprint=key_fingerprint(key)))
    assert _refresh(store, _secret(cached=key, fresh=down)) == "expires within 420s"
    assert store.written.session_id == "mtres_new"
    # but a stored session of another key: the cached one may be the stale one, so no guess
    other = WritableStore(replace(session("a", 300), key_fingerprint="0" * 16))
    with pytest.raises(KeyUnreadable):
        _refresh(other, _secret(cached=key, fresh=down))
