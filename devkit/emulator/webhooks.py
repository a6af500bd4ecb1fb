"""Webhook event destinations: a thin event POSTed with Stripe's signature.

The `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 keyed by the endpoint's secret (whsec_...) over `f"{t}.{body}"`, the raw body;
the official SDKs verify exactly that (and a `t` no older than their tolerance).
"""

from __future__ import annotations

import hashlib
import hmac

import requests

from devkit.emulator.delivery import DeliveryError
from devkit.emulator.settings import WebhookEndpoint
from devkit.emulator.v2_events import ThinEvent

TIMEOUT_S = (2.0, 10.0)  # connect, read
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def signature_header(body: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookTransport:
    """POSTs to one endpoint; a 2xx is delivered, anything else a failed attempt."""

    kind = "webhook"

    def __init__(self, endpoint: WebhookEndpoint, http: requests.Session) -> None:
        self.endpoint = endpoint
        self.destination = endpoint.url
        self._http = http

    def send(self, body: bytes, event: ThinEvent, sent_at: float) -> int | None:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": signature_header(body, self.endpoint.secret, int(sent_at)),
        }
        try:
            response = self._http.post(
                self.endpoint.url, data=body, headers=headers, timeout=TIMEOUT_S
            )
        except requests.RequestException as error:
            raise DeliveryError(f"{type(error).__name__}: {error}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"answered {response.status_code}", response.status_code)
        return response.status_code
