"""The emulated Stripe service over the HTTP server: dispatch and what every request shares.

Request path: inspection (/_emulator/, inspection.py) bypasses everything; a Stripe route
(stripe_api.py) goes through injected latency and faults, authentication, rate limits, then
its handler. Every Stripe request is logged with its headers, secrets masked.

Thin events (asynchronous error reports) leave through the delivery worker (delivery.py) to
the configured webhooks and EventBridge bus; a background ticker closes the validation
windows that the clock has passed, so events go out without anyone reading.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import requests

from devkit.emulator.apierror import ApiError
from devkit.emulator.delivery import Dispatcher, Transport
from devkit.emulator.eventbridge import EventBridgeTransport
from devkit.emulator.faults import Action, FaultInjector, RateLimiter
from devkit.emulator.httpserver import HttpServer, Request, Response, json_response
from devkit.emulator.inspection import Inspection
from devkit.emulator.masking import mask_secret
from devkit.emulator.requestlog import RequestLog
from devkit.emulator.settings import EventBridgeDestination, Settings
from devkit.emulator.state import EmulatorState
from devkit.emulator.stripe_api import StripeApi, credential
from devkit.emulator.v2_events import ThinEvent
from devkit.emulator.webhooks import WebhookTransport

RESET_WAIT_SECONDS = 30.0  # the longest a reset waits for requests still being answered
TICK_SECONDS = 0.5  # how often the ticker closes validation windows the clock has passed
_CONFIG_KEYS = frozenset({"faults", "seed", "rate_limits", "settings", "clear_faults"})
_log = logging.getLogger(__name__)


class Emulator:
    """The whole emulated service, independent of sockets: `handle(Request) -> Response`."""

    def __init__(
        self,
        *,
        seed: int = 0,
        settings: Settings | None = None,
        meters: list[dict[str, Any]] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        rate_limits: dict[str, dict[str, float] | None] | None = None,
        request_log_size: int = 10_000,
    ) -> None:
        self.state = EmulatorState(settings=settings or Settings())
        self.faults = FaultInjector(seed)
        self.limits = RateLimiter()
        self.api = StripeApi(self.state)
        self.inspection = Inspection(self)
        self.log = RequestLog(request_log_size)
        self.dispatcher = Dispatcher(self.state.clock.now)
        self.state.on_thin_events = self._publish
        self._http = requests.Session()  # the webhooks' (used by the delivery worker only)
        self._buses: dict[EventBridgeDestination, EventBridgeTransport] = {}
        self._startup_settings = self.state.settings.copy()
        self._startup = {"faults": faults or {}, "rate_limits": rate_limits or {}, "seed": seed}
        self.configure(self._startup)
        if meters:
            self.state.load_meters(meters)
        self._request_ids = itertools.count(1)
        self._in_flight = 0  # API requests being answered (a reset waits for them)
        self._idle = threading.Condition()
        self._stop_ticking = threading.Event()
        self._ticker: threading.Thread | None = None

    # ----- dispatch ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        if request.path.startswith("/_emulator/"):
            return self.inspection.handle(request)
        with self._idle:
            self._in_flight += 1
        try:
            return self._answer(request)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _answer(self, request: Request) -> Response:
        route = self.api.route(request)
        if route is None:
            return json_response(
                404,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "code": "not_found",
                        "message": f"Unrecognized request URL ({request.method}: {request.path}).",
                    }
                },
            )
        endpoint, version, handler, params = route
        started = time.perf_counter()
        decision = self.faults.decide(endpoint)
        if decision.latency_s > 0:
            time.sleep(decision.latency_s)
        if decision.action is Action.DROP:
            self._record(request, endpoint, 0, started, "drop")
            return Response(0, drop=True)
        try:
            self._authenticate(request, endpoint)
            retry_after = self.limits.acquire(endpoint)
            if retry_after is None and decision.action is Action.RATE_LIMITED:
                retry_after = decision.retry_after_s
            if retry_after is not None:
                raise self._rate_limited(version, retry_after)
            if decision.action is Action.ERROR:
                raise self._server_error(decision.status)
            response = handler(request, **params)
            if decision.action is Action.ERROR_AFTER:
                raise self._server_error(decision.status)
        except ApiError as error:
            response = self._error_response(error, version)
        if decision.action is Action.DROP_AFTER:
            response.drop = True
        if endpoint == "stream":
            response.after = self.state.work_off
        response.headers["Request-Id"] = f"req_{next(self._request_ids):012d}"
        if "stripe-version" in request.headers:
            response.headers["Stripe-Version"] = request.headers["stripe-version"]
        fault = decision.action.value if decision.action is not Action.PROCEED else None
        self._record(request, endpoint, 0 if response.drop else response.status, started, fault)
        return response

    def _record(
        self, request: Request, endpoint: str, status: int, started: float, fault: str | None
    ) -> None:
        self.log.record(request, endpoint, status, started, fault, self.state.clock.now())

    # ----- cross-cutting -------------------------------------------------------------------
    def _authenticate(self, request: Request, endpoint: str) -> None:
        key = credential(request)
        if endpoint == "stream":
            self.state.check_session_token(key)
            return
        if not self.state.settings.key_is_valid(key):
            shown = mask_secret(key) if key else "none"
            raise ApiError(401, "api_key_invalid", f"Invalid API Key provided: {shown}")

    @staticmethod
    def _rate_limited(version: str, retry_after: int) -> ApiError:
        headers = {"Retry-After": str(retry_after)}
        message = "Too many requests hit the API too quickly. Back off and retry."
        if version == "v2":
            return ApiError(
                429,
                "account_rate_limit_exceeded",
                message,
                error_type="rate_limit",
                headers=headers,
            )
        return ApiError(429, "rate_limit", message, headers=headers)

    @staticmethod
    def _server_error(status: int) -> ApiError:
        code = "service_unavailable" if status == 503 else "internal_server_error"
        return ApiError(
            status, code, "An injected server error (emulator fault).", error_type="api_error"
        )

    @staticmethod
    def _error_response(error: ApiError, version: str) -> Response:
        body: dict[str, Any] = {
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
        }
        if version == "v2":
            body["doc_url"] = f"https://docs.stripe.com/error-codes#{error.code.replace('_', '-')}"
        if error.param:
            body["param"] = error.param
        return json_response(error.status, {"error": body}, dict(error.headers))

    def in_flight(self) -> int:
        with self._idle:
            return self._in_flight

    # ----- configuration and reset ---------------------------------------------------------
    def configure(self, config: dict[str, Any]) -> None:
        """POST /_emulator/config: faults, rate limits, seed and any Settings field (at the
        top level or under "settings"). Nothing changes if a value is bad."""
        settings = {k: v for k, v in config.items() if k not in _CONFIG_KEYS}
        settings.update(config.get("settings", {}))
        unknown = set(settings) - Settings.NAMES
        if unknown:
            raise ValueError(f"unknown configuration keys: {sorted(unknown)}")
        self.state.settings.copy().update(settings)  # checked before anything changes
        self.state.drain()  # what was accepted is judged by the rules in force when it came
        if config.get("clear_faults"):
            self.faults.clear()
        if "faults" in config or "seed" in config:
            self.faults.configure(config.get("faults", {}), seed=config.get("seed"))
        if "rate_limits" in config:
            self.limits.configure(config["rate_limits"])
        self.state.settings.update(settings)

    def describe_config(self) -> dict[str, Any]:
        return {
            **self.faults.snapshot(),
            "rate_limits": self.limits.snapshot(),
            **self.state.settings.describe(),
        }

    def reset(self, *, meters: bool, config: bool) -> int:
        """Forget events, sessions, reports, deliveries and the log; restore start-up meters
        (if meters) and configuration (if config). Returns how many requests were still
        being answered when it gave up waiting for them (0 normally)."""
        # a request still being answered (one held by injected latency) would otherwise land
        # in the fresh state: a test's log would show the calls its predecessor left behind
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=RESET_WAIT_SECONDS)
            left = self._in_flight  # not 0 only if a request outlasted the wait
        self.state.reset(meters=meters)
        self.dispatcher.clear()
        self.log.clear()
        if config:
            self.faults.clear()
            self.limits.clear()
            self.state.settings.restore(self._startup_settings)
            self.configure(self._startup)
        return left

    # ----- thin events ---------------------------------------------------------------------
    def _publish(self, events: list[ThinEvent]) -> None:
        """Queue new events for every destination configured now (as Stripe's destinations
        receive what happens while they exist)."""
        settings = self.state.settings
        transports: list[Transport] = [WebhookTransport(w, self._http) for w in settings.webhooks]
        if settings.eventbridge is not None:
            bus = self._buses.get(settings.eventbridge)
            if bus is None:
                bus = self._buses[settings.eventbridge] = EventBridgeTransport(settings.eventbridge)
            transports.append(bus)
        self.dispatcher.submit(
            events,
            transports,
            attempts=settings.delivery_attempts,
            backoff_s=settings.delivery_backoff_s,
        )

    def _tick(self) -> None:
        while not self._stop_ticking.wait(TICK_SECONDS):
            if not self.state.has_open_windows():
                continue
            try:
                self.state.settle()
            except Exception:  # the ticker must outlive any one failure
                _log.exception("closing validation windows failed")

    def start_background(self) -> None:
        """Close validation windows as the clock passes them (the server starts this)."""
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="emulator-ticker")
            self._ticker.daemon = True
            self._ticker.start()

    def close(self) -> None:
        self._stop_ticking.set()
        if self._ticker is not None:
            self._ticker.join(timeout=10)
        self.dispatcher.close()
        self._http.close()


class EmulatorServer:
    """The emulator on a real socket: `with EmulatorServer(...) as emulator: emulator.url`."""

    def __init__(
        self,
        emulator: Emulator | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        **options: Any,
    ) -> None:
        self.emulator = emulator or Emulator(**options)
        self._http = HttpServer(self.emulator.handle, host, port)
        self.host, self.port = self._http.host, self._http.port

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> EmulatorServer:
        self._http.start()
        self.emulator.start_background()
        return self

    def stop(self) -> None:
        self._http.stop()
        self.emulator.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
