"""A Python client of the emulator's inspection API, for tests and the local stack."""

from __future__ import annotations

from typing import Any

import requests

DEFAULT_SECRET_KEY = "sk_test_meter_relay_local"  # noqa: S105 (emulator placeholder, no secret)


class EmulatorClient:
    """Reads and steers a running emulator over HTTP (the /_emulator/ routes)."""

    def __init__(self, url: str, secret_key: str = DEFAULT_SECRET_KEY) -> None:
        self.url = url.rstrip("/")
        self.secret_key = secret_key
        self._http = requests.Session()

    def _get(self, route: str, **params: Any) -> Any:
        response = self._http.get(f"{self.url}/_emulator/{route}", params=params, timeout=60)
        response.raise_for_status()
        return response.json()

    def _post(self, route: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        response = self._http.post(
            f"{self.url}/_emulator/{route}", json=body or {}, timeout=timeout
        )
        response.raise_for_status()
        return response.json()

    # ----- reading -------------------------------------------------------------------------
    def health(self) -> bool:
        return bool(self._get("health")["ok"])

    def events(self, **filters: str) -> list[dict[str, Any]]:
        """Every received event (filters: identifier, event_name, customer, status, source)."""
        data: list[dict[str, Any]] = self._get("events", **filters)["data"]
        return data

    def identifiers(self) -> dict[str, dict[str, int]]:
        """identifier -> {"received": n, "counted": n}."""
        data: dict[str, dict[str, int]] = self._get("identifiers")["identifiers"]
        return data

    def counted_more_than_once(self) -> list[str]:
        data: list[str] = self._get("identifiers")["counted_more_than_once"]
        return data

    def errors(self) -> dict[str, Any]:
        """Asynchronous validation failures: {"total", "counts": {code: n}, "data": [...]}."""
        data: dict[str, Any] = self._get("errors")
        return data

    def adjustments(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self._get("adjustments")["data"]
        return data

    def requests(
        self, endpoint: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if endpoint:
            params["endpoint"] = endpoint
        if limit:
            params["limit"] = limit
        data: list[dict[str, Any]] = self._get("requests", **params)["data"]
        return data

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self._get("stats")
        return data

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = self._get("config")
        return data

    def deliveries(self) -> dict[str, Any]:
        """Pushes of thin events: {"pending": n, "data": [{"event", "kind", "destination",
        "status" (pending|delivered|failed), "attempts": [{"at", "status", "error"}], "body"}]}."""
        data: dict[str, Any] = self._get("deliveries")
        return data

    # ----- steering ------------------------------------------------------------------------
    def reset(self, *, meters: bool = True, config: bool = True) -> None:
        """Forget events, sessions, logs; by default also meters and config (to start-up's).

        Raises if a request was still being answered when the emulator gave up waiting for it:
        it would land in the fresh state."""
        left = self._post("reset", {"meters": meters, "config": config}).get("in_flight", 0)
        if left:
            raise RuntimeError(f"{left} request(s) still being answered after the reset")

    def configure(self, **config: Any) -> dict[str, Any]:
        """Faults, rate limits, session_ttl, value_rule...: see POST /_emulator/config."""
        data: dict[str, Any] = self._post("config", config)
        return data

    def set_faults(self, endpoint: str, seed: int | None = None, **spec: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"faults": {endpoint: spec}}
        if seed is not None:
            config["seed"] = seed
        return self.configure(**config)

    def advance_clock(self, seconds: float) -> dict[str, Any]:
        """Move the clock; validation windows it passes become thin events, then pushed."""
        data: dict[str, Any] = self._post("clock", {"advance": seconds})
        return data

    def set_clock(self, moment: float | str) -> dict[str, Any]:
        """Set the clock to epoch seconds or an RFC 3339 date-time."""
        data: dict[str, Any] = self._post("clock", {"set": moment})
        return data

    def close_error_windows(self) -> dict[str, Any]:
        """Advance the clock by one validation window: every failure so far is then reported
        in a thin event (GET /v2/core/events) and its push queued."""
        return self.advance_clock(float(self.config()["error_window_s"]))

    def wait_for_deliveries(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Close the windows that have ended, wait until every push is delivered or has
        failed for good, and return the deliveries; TimeoutError if some are still left."""
        data: dict[str, Any] = self._post(
            "deliveries/wait", {"timeout": timeout}, timeout=timeout + 30
        )
        if data["pending"]:
            raise TimeoutError(f"{data['pending']} deliveries still pending after {timeout} s")
        deliveries: list[dict[str, Any]] = data["data"]
        return deliveries

    def set_webhooks(self, *endpoints: tuple[str, str]) -> dict[str, Any]:
        """Push thin events to these (url, whsec_ secret) endpoints (none: stop pushing)."""
        return self.configure(
            webhooks=[{"url": url, "secret": secret} for url, secret in endpoints]
        )

    def set_eventbridge(
        self,
        event_bus_name: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """Put thin events on this EventBridge bus as Stripe's partner source would."""
        bus = {"event_bus_name": event_bus_name, "endpoint_url": endpoint_url, "region": region}
        if source is not None:
            bus["source"] = source
        return self.configure(eventbridge=bus)

    def set_known_customers(self, *customers: str) -> dict[str, Any]:
        """The customers the account has (none: every customer is known); events for another
        are reported meter_event_customer_not_found."""
        return self.configure(known_customers=list(customers))

    def expire_sessions(self) -> int:
        return int(self._post("sessions/expire")["expired"])

    # ----- Stripe-side helpers (through the real v1 API, as an operator would) -------------
    def create_meter(
        self,
        event_name: str,
        *,
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        formula: str = "sum",
    ) -> dict[str, Any]:
        response = self._http.post(
            f"{self.url}/v1/billing/meters",
            data={
                "display_name": event_name,
                "event_name": event_name,
                "default_aggregation[formula]": formula,
                "customer_mapping[event_payload_key]": customer_key,
                "customer_mapping[type]": "by_id",
                "value_settings[event_payload_key]": value_key,
            },
            headers={"Authorization": f"Bearer {self.secret_key}"},
            timeout=30,
        )
        response.raise_for_status()
        meter: dict[str, Any] = response.json()
        return meter

    def list_events(self, **params: Any) -> dict[str, Any]:
        """GET /v2/core/events (types=[...], object_id, created={"gt": ...}, limit, page)."""
        query: dict[str, Any] = {}
        for name, value in params.items():
            if name == "types":
                query.update({f"types[{i}]": t for i, t in enumerate(value)})
            elif name == "created":
                query.update({f"created[{op}]": at for op, at in value.items()})
            else:
                query[name] = value
        return self._stripe_get("/v2/core/events", query)

    def get_event(self, event_id: str) -> dict[str, Any]:
        """GET /v2/core/events/{id}: a thin event with its data."""
        return self._stripe_get(f"/v2/core/events/{event_id}", {})

    def _stripe_get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self._http.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.secret_key}"},
            timeout=30,
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def deactivate_meter(self, meter_id: str) -> dict[str, Any]:
        response = self._http.post(
            f"{self.url}/v1/billing/meters/{meter_id}/deactivate",
            headers={"Authorization": f"Bearer {self.secret_key}"},
            timeout=30,
        )
        response.raise_for_status()
        meter: dict[str, Any] = response.json()
        return meter

    def close(self) -> None:
        self._http.close()
