"""Secrets as the emulator shows them (request log, configuration): kind and last 4 only."""

from __future__ import annotations

import re

_SECRET_KIND = re.compile(r"[a-z]{1,8}_(?:test_|live_)?")


def mask_secret(value: str) -> str:
    """Keep a secret's kind (sk_test_, rk_live_, whsec_, token_...) and its last 4 characters."""
    scheme, _, secret = value.partition(" ") if " " in value else ("", "", value)
    if len(secret) <= 12:
        masked = "****"
    else:
        # the kind only: underscores further in belong to the secret (session tokens hold them)
        kind = _SECRET_KIND.match(secret)
        masked = f"{kind.group() if kind else ''}****{secret[-4:]}"
    return f"{scheme} {masked}" if scheme else masked
