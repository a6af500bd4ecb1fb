"""Stripe's webhook signature: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.

Each v1 is HMAC-SHA256, keyed by the endpoint's signing secret (whsec_...), over
`f"{t}.{raw body}"`. A request is Stripe's when any v1 matches (while a secret is rolled,
Stripe signs with each), compared in constant time; other schemes (the v0 of test mode) are
ignored, as Stripe says to, against downgrades. A `t` older than the tolerance is refused, so
a captured request cannot be replayed later; like Stripe's SDKs, a `t` in the future is not.
No message here quotes a signature, the secret or the body.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300  # Stripe's SDKs' default


class SignatureError(Exception):
    """Why a request is not taken as Stripe's (safe to log and to answer)."""


def expected_signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    payload: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """The header's timestamp when the request is Stripe's, else SignatureError saying why."""
    if not header or not header.strip():
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        scheme, _, value = item.strip().partition("=")
        if scheme == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(
                    f"{SIGNATURE_HEADER} has a timestamp that is not a number"
                ) from None
        elif scheme == "v1" and value:
            candidates.append(value)
    if timestamp is None:
        raise SignatureError(f"{SIGNATURE_HEADER} has no timestamp")
    if not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} has no v1 signature")
    expected = expected_signature(payload, secret, timestamp).encode()
    # every candidate is compared, so the time taken does not tell which one came close
    matched = [hmac.compare_digest(expected, c.encode("ascii", "replace")) for c in candidates]
    if not any(matched):
        raise SignatureError(f"no v1 signature of {SIGNATURE_HEADER} matches the body")
    age = (time.time() if now is None else now) - timestamp
    if age > tolerance:
        raise SignatureError(
            f"{SIGNATURE_HEADER} is {age:.0f} s old, more than the {tolerance:.0f} s allowed"
        )
    return timestamp
