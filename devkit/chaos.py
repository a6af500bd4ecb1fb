"""`make chaos`: the local stack with every fault at once; it must lose nothing.

Stream faults (5xx, 429 bursts with Retry-After, latency, dropped connections, and ambiguous
failures: calls processed but answered 500 or cut), sessions that live 30 s and are also ended
by Stripe mid-run, a refresher outage (sessions ended as it begins, no schedule, Stripe refuses
new sessions, and it lasts until the forwarder has met it), a phase of sustained rate limiting
(the stream takes a few requests a second and answers 429 beyond, with Retry-After), SSM
answering a share of calls with ThrottlingException, and the forwarder killed (SIGKILL of its
process) in the middle of batches, with MaxReceiveCount at 10 (a tenth of the template's), so
that receives burnt by rate limiting would show. Stripe's error reports reach
ErrorReportsFunction through the partner bus and the template's rule (EventBridge; `make run`
uses the webhook). The report must show 0 unaccounted, 0 counted twice, the DLQ holding
exactly the invalid events with their codes (no valid event dead-lettered), and every event
Stripe rejected later in the DLQ by its report's letter or counted without a sample, adding
up to Stripe's totals; the exit status says so.
"""

from __future__ import annotations

import argparse
import sys

from devkit.local_error_reports import EVENTBRIDGE, ROUTES
from devkit.local_stack import Options, publish, run

STREAM_FAULTS = {
    "error_rate": 0.05,
    "error_statuses": [500, 503],
    "latency_ms": 2,
    "latency_jitter_ms": 8,
    "drop_rate": 0.02,
    "burst_429_rate": 0.01,
    "burst_429_length": 5,
    "retry_after_s": 1,
    "error_after_rate": 0.02,
    "drop_after_rate": 0.01,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--envelope-size", type=int, default=10)
    parser.add_argument("--invalid-share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--session-ttl", type=float, default=30.0)
    parser.add_argument("--kill-every", type=int, default=4, help="kill every Nth invocation")
    parser.add_argument("--ssm-throttle-rate", type=float, default=0.3)
    parser.add_argument(
        "--outage",
        type=float,
        nargs=2,
        default=(12.0, 12.0),
        metavar=("START", "LENGTH"),
        help="refresher outage: start and least length, s into the run",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        nargs=3,
        default=(28.0, 20.0, 5.0),
        metavar=("START", "LENGTH", "RATE"),
        help="sustained rate limiting: start and length (s into the run), stream requests/s",
    )
    parser.add_argument("--max-receive-count", type=int, default=10)
    parser.add_argument(
        "--duration", type=float, default=45.0, help="production is spread over this many seconds"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--error-reports",
        choices=ROUTES,
        default=EVENTBRIDGE,
        help="how Stripe's error reports reach ErrorReportsFunction (default eventbridge)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    options = Options(
        events=args.events,
        invalid_share=args.invalid_share,
        envelope_size=args.envelope_size,
        batch_size=100,  # smaller batches: more invocations, so more of them meet a fault
        window=1.0,
        visibility_timeout=5,
        max_receive_count=args.max_receive_count,
        seed=args.seed,
        timeout=args.timeout,
        faults={"stream": STREAM_FAULTS},
        session_ttl=args.session_ttl,
        forwarder_process=True,
        kill_every=args.kill_every,
        ssm_throttle_rate=args.ssm_throttle_rate,
        refresher_outage=(args.outage[0], args.outage[1]),
        # 5 s in and after the outage (which ends them too, as it begins)
        expire_sessions_at=(5.0, args.outage[0] + args.outage[1] + 6.0),
        rate_limit_phase=(args.rate_limit[0], args.rate_limit[1], args.rate_limit[2]),
        produce_for=args.duration,
        error_reports=args.error_reports,
    )
    return publish(run(options), as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
