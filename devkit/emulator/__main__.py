"""`python -m devkit.emulator --port 12111`: run the Stripe meter API emulator."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from devkit.emulator.apierror import ApiError
from devkit.emulator.app import EmulatorServer
from devkit.emulator.faults import ENDPOINTS
from devkit.emulator.settings import Settings, WebhookEndpoint

_NOT_SETTINGS = ("faults", "rate_limits", "seed", "settings", "clear_faults")


def _rate_limit(text: str) -> tuple[str, dict[str, float]]:
    endpoint, _, spec = text.partition("=")
    rate, _, burst = spec.partition(":")
    if endpoint not in ENDPOINTS or not rate:
        raise argparse.ArgumentTypeError(
            f"expected ENDPOINT=RATE[:BURST], ENDPOINT one of {ENDPOINTS}"
        )
    return endpoint, {"rate": float(rate), "burst": float(burst or rate)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripe-emulator",
        description="Emulates Stripe's meter event APIs on a local port. "
        "Inspection API under /_emulator/ (see docs/development.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12111, help="port (0 picks a free one)")
    parser.add_argument(
        "--session-ttl",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="lifetime of meter event session tokens (default 900)",
    )
    parser.add_argument(
        "--meters",
        type=Path,
        metavar="FILE",
        help="JSON list of meters in Stripe's billing.meter shape",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help='JSON as POST /_emulator/config takes: {"faults": {...}, "rate_limits": {...}, ...}',
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept only these secret keys (default: any sk_test_...)",
    )
    parser.add_argument(
        "--webhook",
        action="append",
        default=[],
        metavar="URL",
        help="push thin events (asynchronous error reports) to this URL, signed with the "
        "secret in --webhook-secret-file (repeatable)",
    )
    parser.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="FILE",
        help="file holding the whsec_... secret that signs --webhook deliveries",
    )
    parser.add_argument(
        "--value-rule",
        choices=["positive_integer", "decimal"],
        default="positive_integer",
        help="what a meter value may be",
    )
    faults = parser.add_argument_group("faults (applied to --fault-endpoints)")
    faults.add_argument(
        "--fault-endpoints",
        default="stream",
        help=f"comma-separated, from {','.join(ENDPOINTS)} or * (default stream)",
    )
    faults.add_argument("--error-rate", type=float, default=0.0, help="share answered 500/503")
    faults.add_argument("--latency-ms", type=float, default=0.0, help="added latency")
    faults.add_argument("--latency-jitter-ms", type=float, default=0.0, help="random extra latency")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of dropped connections")
    faults.add_argument(
        "--burst-429-rate",
        type=float,
        default=0.0,
        help="chance that a request starts a burst of 429s",
    )
    faults.add_argument("--burst-429-length", type=int, default=10, help="requests in a burst")
    faults.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        type=_rate_limit,
        metavar="ENDPOINT=RATE[:BURST]",
        help="token-bucket limit, per second",
    )
    parser.add_argument(
        "--request-log-size", type=int, default=10_000, help="requests kept for /_emulator/requests"
    )
    parser.add_argument(
        "--lifetime",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop by itself after this long (0: run until interrupted)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    faults: dict[str, dict[str, Any]] = dict(config.get("faults", {}))
    spec = {
        "error_rate": args.error_rate,
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.latency_jitter_ms,
        "drop_rate": args.drop_rate,
        "burst_429_rate": args.burst_429_rate,
        "burst_429_length": args.burst_429_length,
    }
    if any(spec[k] for k in spec if k != "burst_429_length"):
        for endpoint in args.fault_endpoints.split(","):
            faults[endpoint.strip()] = {**faults.get(endpoint.strip(), {}), **spec}
    rate_limits = dict(config.get("rate_limits", {}))
    rate_limits.update(dict(args.rate_limit))
    settings = Settings(session_ttl=args.session_ttl, value_rule=args.value_rule)
    values = {k: v for k, v in config.items() if k not in _NOT_SETTINGS}
    settings.update({**values, **config.get("settings", {})})  # the file's values win
    if args.api_key:
        settings.accepted_keys = list(args.api_key)
    if args.webhook:
        if args.webhook_secret_file is None:
            raise ValueError("--webhook needs --webhook-secret-file (the whsec_... secret)")
        secret = args.webhook_secret_file.read_text().strip()
        settings.webhooks = settings.webhooks + [
            WebhookEndpoint.parse({"url": url, "secret": secret}) for url in args.webhook
        ]
    try:
        meters = json.loads(args.meters.read_text()) if args.meters else []
    except json.JSONDecodeError as error:
        raise ValueError(f"{args.meters}: not JSON: {error}") from None
    if not isinstance(meters, list) or not all(isinstance(m, dict) for m in meters):
        raise ValueError(f"{args.meters}: expected a JSON list of meters (objects)")
    return {
        "seed": int(config.get("seed", args.seed)),
        "settings": settings,
        "meters": meters,
        "faults": faults,
        "rate_limits": rate_limits,
        "request_log_size": args.request_log_size,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = EmulatorServer(host=args.host, port=args.port, **options_from_args(args))
    except (ValueError, OSError) as error:
        print(f"stripe-emulator: {error}", file=sys.stderr)
        return 2
    except ApiError as error:  # only meters are checked as the v1 API would: --meters
        print(f"stripe-emulator: {args.meters}: {error.message}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"Stripe meter API emulator listening on {server.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait(args.lifetime or None)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
