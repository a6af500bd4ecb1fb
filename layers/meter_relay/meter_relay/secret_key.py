"""The Stripe secret key, read from Secrets Manager (only the refresher and operator tools do).

The template creates the secret empty; until the operator sets it, every reader gets the
same clear message. Messages name the secret, never its value.
"""

from __future__ import annotations

import hashlib

from aws_lambda_powertools.utilities.parameters import SecretsProvider
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from meter_relay.config import StripeMode, is_stripe_url, key_mode

SECRET_PLACEHOLDER = "REPLACE_WITH_STRIPE_SECRET_KEY"  # noqa: S105 (means "not set yet")
SECRET_MAX_AGE_SECONDS = 300  # a rotated key is picked up within five minutes


class SecretKeyError(Exception):
    """The key cannot be had: missing, empty, unreadable, or not a Stripe key."""


class KeyModeError(SecretKeyError):
    """The key is not in the stack's StripeMode."""


class SecretUnreadable(SecretKeyError):
    """Secrets Manager could not be read (throttled, down, refused): nothing is known of the
    key, unlike the other errors, which say what is wrong with it."""


def read_secret_key(
    secrets: SecretsProvider,
    secret_id: str,
    *,
    api_base: str,
    mode: StripeMode | None = None,
    fresh: bool = False,
) -> str:
    """The key, if it may be used here: a live key only with Stripe's own `api_base` (a local
    file naming an emulator must never make a live key leave for it), and only a key of `mode`
    when a mode is set (the stack's StripeMode). `fresh`: read past the cache (an operator's
    forced run right after putting a new key in the secret)."""
    try:
        value = secrets.get(secret_id, max_age=SECRET_MAX_AGE_SECONDS, force_fetch=fresh)
    except GetParameterError as error:
        if "ResourceNotFoundException" in str(error):
            raise SecretKeyError(
                f"the secret {secret_id} has no value yet (or does not exist): set the Stripe "
                "secret key (see docs/deploy.md)"
            ) from None
        raise SecretUnreadable(
            f"cannot read the Stripe secret key from {secret_id}: "
            f"{type(error.__cause__ or error).__name__}"
        ) from None
    key = str(value).strip()
    if not key or key == SECRET_PLACEHOLDER:
        raise SecretKeyError(
            f"the secret {secret_id} holds no Stripe key yet: set its value (see docs/deploy.md)"
        )
    if not key.startswith(("sk_", "rk_")):
        raise SecretKeyError(f"the secret {secret_id} does not hold a Stripe key")
    held = key_mode(key)
    if held == "live" and not is_stripe_url(api_base):
        raise SecretKeyError(
            f"the secret {secret_id} holds a live key and the Stripe API base {api_base!r} is "
            "not Stripe's (https://api.stripe.com): refusing to send a live key there"
        )
    if mode is not None and held != mode:
        what = f"a {held}-mode key" if held else "a key whose mode cannot be told"
        raise KeyModeError(
            f"the secret {secret_id} holds {what}, but this stack's StripeMode is {mode}: put a "
            f"{mode}-mode key (sk_{mode}_ or rk_{mode}_) in the secret, or deploy the stack with "
            "the StripeMode of its key"
        )
    return key


def key_fingerprint(key: str) -> str:
    """Which key made a session, kept beside it: the first 16 hex digits of the key's SHA-256,
    from which the key cannot be had. A session made with another key (rotated, perhaps of
    another account) is then replaced on the refresher's next run."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]
