"""Stripe's webhook signature rule (meter_relay.webhook_signature), checked against the emulator's
signer and the official SDK's verifier, which must agree with it on every case."""

from __future__ import annotations

import time

import pytest
import stripe

from devkit.emulator.webhooks import signature_header
from meter_relay.webhook_signature import (
    TOLERANCE_SECONDS,
    SignatureError,
    expected_signature,
    verify_signature,
)

SECRET = "whsec_test_unit_0123456789abcdef"
OTHER_SECRET = "whsec_test_unit_fedcba9876543210"
BODY = (
    b'{\n  "id": "evt_test_1",\n  "object": "v2.core.event",\n'
    b'  "type": "v1.billing.meter.no_meter_found"\n}'
)
NOW = 1_790_000_000


def sdk_accepts(body: bytes, header: str, secret: str = SECRET) -> bool:
    """What stripe-python's verifier says (it reads the clock itself)."""
    try:
        stripe.WebhookSignature.verify_header(body.decode(), header, secret, TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        return False
    return True


def refusal(body: bytes, header: str | None, secret: str = SECRET, now: float = NOW) -> str:
    with pytest.raises(SignatureError) as refused:
        verify_signature(body, header, secret, now=now)
    return str(refused.value)


def test_the_emulators_signature_is_accepted_and_its_time_returned() -> None:
    header = signature_header(BODY, SECRET, NOW)
    assert verify_signature(BODY, header, SECRET, now=NOW) == NOW
    assert verify_signature(BODY, header, SECRET, now=NOW + TOLERANCE_SECONDS) == NOW
    current = signature_header(BODY, SECRET, int(time.time()))
    assert verify_signature(BODY, current, SECRET)
    assert sdk_accepts(BODY, current)


def test_a_wrong_secret_is_refused() -> None:
    header = signature_header(BODY, OTHER_SECRET, int(time.time()))
    assert "no v1 signature" in refusal(BODY, header, now=time.time())
    assert not sdk_accepts(BODY, header)


@pytest.mark.parametrize(
    "tampered",
    [
        BODY.replace(b"no_meter_found", b"error_report_triggered"),
        BODY + b"\n",  # the raw bytes are signed: even whitespace counts
        BODY.replace(b"\n", b"\r\n"),
    ],
)
def test_a_tampered_body_is_refused(tampered: bytes) -> None:
    header = signature_header(BODY, SECRET, int(time.time()))
    assert "matches the body" in refusal(tampered, header, now=time.time())
    assert not sdk_accepts(tampered, header)


def test_a_signature_older_than_the_tolerance_is_refused() -> None:
    header = signature_header(BODY, SECRET, NOW)
    why = refusal(BODY, header, now=NOW + TOLERANCE_SECONDS + 1)
    assert "301 s old" in why
    old = signature_header(BODY, SECRET, int(time.time()) - TOLERANCE_SECONDS - 5)
    assert not sdk_accepts(BODY, old)


def test_a_future_timestamp_is_accepted_as_stripes_sdks_accept_it() -> None:
    future = int(time.time()) + 3600
    header = signature_header(BODY, SECRET, future)
    assert verify_signature(BODY, header, SECRET) == future
    assert sdk_accepts(BODY, header)


def test_any_v1_may_match_among_several() -> None:
    """While a secret is rolled, Stripe signs with each; other schemes (v0) are ignored."""
    good = expected_signature(BODY, SECRET, NOW)
    bad = expected_signature(BODY, OTHER_SECRET, NOW)
    header = f"t={NOW},v1={bad},v0={good},v1={good}"
    assert verify_signature(BODY, header, SECRET, now=NOW) == NOW
    only_v0 = f"t={NOW},v0={good}"
    assert "no v1 signature" in refusal(BODY, only_v0)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "no Stripe-Signature header"),
        ("", "no Stripe-Signature header"),
        ("   ", "no Stripe-Signature header"),
        (f"v1={'0' * 64}", "no timestamp"),
        (f"t=soon,v1={'0' * 64}", "not a number"),
        (f"t={NOW}", "no v1 signature"),
        (f"t={NOW},v1=", "no v1 signature"),
        (f"t={NOW},v1=é{'0' * 63}", "matches the body"),  # not ASCII: no match, no crash
        ("garbage", "no timestamp"),
    ],
)
def test_a_missing_or_malformed_header_is_refused_saying_why(header: str | None, why: str) -> None:
    assert why in refusal(BODY, header)


def test_no_refusal_quotes_the_secret_or_a_signature() -> None:
    good = expected_signature(BODY, SECRET, NOW)
    bad = expected_signature(BODY, OTHER_SECRET, NOW)
    for header, now in [
        (f"t={NOW},v1={bad}", NOW),
        (f"t={NOW},v1={good}", NOW + 10_000),
        (f"t=x,v1={good}", NOW),
    ]:
        why = refusal(BODY, header, now=now)
        assert not [text for text in (SECRET, good, bad) if text in why]
