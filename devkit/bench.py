"""`make bench`: the forwarder's throughput against a baseline and the official SDK, side by side.

Everything runs in one sitting on this machine against the Stripe emulator (its own process;
moto server, in its own process too, only serves the one token read and is never on the hot
path). Figures:
- forwarder: the handler invoked as Lambda would (devkit.harness, warm), with SQS batches of
  10,000 single-event records and of 100 envelope messages of 100 events: events/s, CPU
  seconds per 100,000 events (this process: the harness runs the handler here);
- the ledger's cost: the forwarder with and without the delivery ledger, back to back in
  each of 241 rounds: the median of each round's increase in CPU per event, its 95%
  confidence interval, and the middle half of the rounds (a cost of a few per cent is less
  than the machine drifts between rounds, and the middle half of one run's rounds spans 7 to
  15 points: 61 rounds left the median's 95% interval about +-2.5 points wide, 241 about
  +-1 to +-2); the same in batches of the template's BatchSize (1,000 records; or of
  --ledger-batch-sizes), where what an invocation's ledger costs whatever its size (one
  object, one signed PUT) weighs ten times as much per event; and for envelopes of 100;
- baseline: the same events, pre-serialised into 100-event bodies, posted over one
  keep-alive requests.Session at the same concurrency: what this machine allows at best;
- floors, the same single-event payloads decoded as Lambda does and their bodies sent through
  the forwarder's own stream client at that concurrency, (a) unread, (b) each decoded but not
  judged: no forwarder that reads every record can beat (b), nor any forwarder at all (a);
  the gap from (b) to the forwarder is what judging and accounting for events costs;
- the official stripe SDK as its users write it: (a) Stripe's example, a new client per send
  and one event a call, (b) 100-event batches through one reused client at that concurrency;
- cold start, in a fresh interpreter each that may import only what the Lambda layer holds
  (its lock's modules, the standard library), the project's modules compiled first as the
  layer ships them, held to the CPU of the template's memory size as the table below is: the
  handler module's import time, and the first invocation (init included) of a new execution
  environment, with its peak RSS after a batch;
- at Stripe's latency: the emulator answers each stream call after a log-normal latency (a
  40 ms median and a long tail by default), as Stripe does over the internet, where the
  forwarder mostly waits and Lambda bills the wait: for several StreamConcurrency values, the
  wall time of a 10,000-record batch, events/s per invocation, GB-seconds and dollars per
  million events, for several memory sizes, each run at the CPU Lambda gives it (1,769 MB is
  one vCPU) where the machine lets the bench hold itself to that (devkit.cpu_share).
It prints tables, ends with the ratio lines (`forwarder/decoded floor`, `envelopes/baseline`,
`forwarder/baseline`) and writes bench/results.json. Ratios, not timed assertions: nothing here
fails a build.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.metadata
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.compat import HAS_CRT
from requests.adapters import HTTPAdapter

from devkit import bench_chart
from devkit.cpu_share import cpu_share, vcpus_for
from devkit.emulator.client import DEFAULT_SECRET_KEY
from devkit.harness import Invocation, load_function
from devkit.layer_lock import locked, normalise
from devkit.local_stack import METERS, TEMPLATE, _server_process
from devkit.moto_server import aws_env
from meter_relay.events import decode_body, format_timestamp
from meter_relay.stripe_client import Kind, MeterEventStream, StripeHttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
CHART = ROOT / "docs" / "bench.svg"
PARAMETER = "/meter-relay/bench/session"
LEDGER_BUCKET = "meter-relay-bench-ledger"
API_VERSION = "2026-09-30.preview"


def make_events(n: int) -> list[dict[str, Any]]:
    """Events as a producer sending 10,000 a second stamps them: ten a millisecond, the batch
    ending now (one timestamp for all would flatter whatever judges timestamps once)."""
    end = datetime.now(UTC)
    return [
        {
            "event_name": "api_requests",
            "identifier": uuid.uuid4().hex,
            "timestamp": format_timestamp(end - timedelta(milliseconds=(n - i) // 10)),
            "payload": {"stripe_customer_id": f"cus_{i % 500:04d}", "value": str(1 + i % 9)},
        }
        for i in range(n)
    ]


def sqs_event(bodies: list[str], queue_arn: str) -> dict[str, Any]:
    sent = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "bench",
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": sent,
                    "ApproximateFirstReceiveTimestamp": sent,
                    "SenderId": "bench",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }


def sign_as_the_layer(module: str, argv: list[str] | None) -> None:
    """Run `module` again with botocore's pure-Python SigV4 signer, where this process would sign
    with awscrt's. botocore signs with awscrt where it is installed (this environment has it:
    the SAM CLI requires it), choosing once, when imported; the Lambda layer ships no awscrt,
    so a deployed forwarder signs its ledger PUTs in Python. The two differ little (Python's
    +0.7% of the forwarder's CPU at 1,000 records, within the noise), but the bench measures
    what ships. BOTO_DISABLE_CRT set, to anything, is the caller's choice and kept."""
    if HAS_CRT and "BOTO_DISABLE_CRT" not in os.environ:
        sys.stdout.flush()
        command = [sys.executable, "-m", module, *(sys.argv[1:] if argv is None else argv)]
        os.execve(sys.executable, command, {**os.environ, "BOTO_DISABLE_CRT": "true"})  # noqa: S606


def s3_signer() -> str:
    """Whose SigV4 signer botocore uses in this process."""
    return "awscrt" if HAS_CRT else "botocore"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def stack(emulator_url: str, moto_url: str) -> Iterator[dict[str, Any]]:
    """A session in SSM, a DLQ, and the env-vars the forwarder runs with."""
    env = aws_env(moto_url)
    os.environ.update(env)
    session = requests.post(
        f"{emulator_url}/v2/billing/meter_event_session",
        headers={"Authorization": f"Bearer {DEFAULT_SECRET_KEY}"},
        timeout=10,
    ).json()
    ssm = boto3.client("ssm")
    ssm.put_parameter(
        Name=PARAMETER,
        Type="SecureString",
        Overwrite=True,
        Value=json.dumps(
            {
                "token": session["authentication_token"],
                "session_id": session["id"],
                "livemode": session["livemode"],
                "expires_at": session["expires_at"],
            }
        ),
    )
    dlq = boto3.client("sqs").create_queue(QueueName="bench-dlq")["QueueUrl"]
    boto3.client("s3").create_bucket(Bucket=LEDGER_BUCKET)
    yield {
        "env": env,
        "token": session["authentication_token"],
        "env_vars": {
            "Parameters": {"SESSION_TOKEN_PARAMETER": PARAMETER, "STRIPE_MODE": "test"},
            "ForwarderFunction": {
                "STRIPE_METER_EVENTS_BASE": emulator_url,
                "DEAD_LETTER_QUEUE_URL": dlq,
                "REFRESHER_FUNCTION_NAME": "",
                "STREAM_CONCURRENCY": "8",
            },
        },
    }


@dataclass
class Contestant:
    """One path measured: `prepare` makes an input (not timed), `run` sends it (timed)."""

    prepare: Callable[[], Any]
    run: Callable[[Any], None]
    rates: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def result(self) -> dict[str, float]:
        return {
            "events_per_s": statistics.median(self.rates),
            "cpu_s_per_100k": statistics.median(self.cpus),
        }

    def time_once(self, events: int) -> tuple[float, float]:
        """One run of `events`: events/s and CPU seconds per 100,000 (the input made untimed)."""
        prepared = self.prepare()
        cpu, wall = cpu_seconds(), time.perf_counter()
        self.run(prepared)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        return events / wall, cpu / events * 100_000


def race(contestants: list[Contestant], events: int, rounds: int) -> None:
    """Rounds interleaved (a round of each, then the next), so that whatever else the machine
    does at a moment weighs on every path alike: the ratios are what this bench is for."""
    for _ in range(rounds):
        for contestant in contestants:
            rate, cpu = contestant.time_once(events)
            contestant.rates.append(rate)
            contestant.cpus.append(cpu)


@dataclass(frozen=True)
class Increase:
    """How much more CPU per event a variant takes than its base: the median over rounds that
    each ran both, the middle half of those rounds (first to third quartile: how much one
    round says), and the 95% confidence interval of the median (how much they all say)."""

    median: float
    low: float
    high: float
    rounds: int
    confidence: tuple[float, float]

    def spread(self) -> str:
        """How far the median can be trusted, and how far one round can, as printed."""
        return (
            f"95% confidence {self.confidence[0]:+.1%} to {self.confidence[1]:+.1%}; "
            f"middle half {self.low:+.1%} to {self.high:+.1%}"
        )


def paired_increase(base_cpus: list[float], variant_cpus: list[float]) -> Increase:
    """Each round's own increase (variant / base - 1), then their median, quartiles and the
    median's confidence interval."""
    increases = [variant / base - 1 for base, variant in zip(base_cpus, variant_cpus, strict=True)]
    if len(increases) < 2:
        low = high = increases[0]
    else:
        low, _, high = statistics.quantiles(increases, n=4)
    return Increase(
        statistics.median(increases), low, high, len(increases), median_confidence(increases)
    )


def median_confidence(values: list[float]) -> tuple[float, float]:
    """The 95% confidence interval of the median, free of any assumption about the rounds'
    distribution: the order statistics n/2 -+ 0.98 sqrt(n) (the binomial's normal
    approximation; a round's increase is as likely above the true median as below it)."""
    ordered = sorted(values)
    n = len(ordered)
    half_width = 0.98 * math.sqrt(n)
    lower = max(1, math.floor(n / 2 - half_width))
    upper = min(n, math.ceil(n / 2 + 1 + half_width))
    return ordered[lower - 1], ordered[upper - 1]


def race_pair(base: Contestant, variant: Contestant, events: int, rounds: int) -> Increase:
    """`variant` against `base`, the two back to back in each round, the first of them
    alternating. A cost of a few per cent is smaller than what this machine's speed drifts
    between rounds: a ratio of two medians moved from +1% to +14% from run to run, each
    round's own ratio cancels the drift."""
    base_cpus: list[float] = []
    variant_cpus: list[float] = []
    for number in range(rounds):
        pair = [(base, base_cpus), (variant, variant_cpus)]
        for contestant, cpus in pair if number % 2 == 0 else reversed(pair):
            cpus.append(contestant.time_once(events)[1])
    return paired_increase(base_cpus, variant_cpus)


def ledger_cost_at(setup: dict[str, Any], events: int, rounds: int, scope: ExitStack) -> Increase:
    """The ledger's cost in batches of `events` single-event records: what an invocation
    costs it whatever its size (one object, one PUT) weighs more in smaller batches."""
    singles, _, close = bench_forwarder(setup, events)
    scope.callback(close)
    with_ledger, _, close_ledger = bench_forwarder(setup, events, ledger=True)
    scope.callback(close_ledger)
    return race_pair(singles, with_ledger, events, rounds)


def describe_share(cost: Increase, batches: str) -> str:
    return (
        f"{cost.median:+.1%} of the forwarder's in {batches} (median of "
        f"{cost.rounds} paired rounds, {cost.spread()})"
    )


def share_json(cost: Increase) -> dict[str, Any]:
    return {
        "median": cost.median,
        "middle_half": [cost.low, cost.high],
        "confidence_95": list(cost.confidence),
    }


def _check(invocation: Invocation) -> None:
    """A benchmark of failures would be meaningless: every event must have gone through."""
    if not invocation.ok or invocation.result["batchItemFailures"]:
        raise RuntimeError(f"the forwarder did not deliver everything: {invocation.error}")


def bench_forwarder(
    setup: dict[str, Any], n: int, ledger: bool = False, template: Path = TEMPLATE
) -> tuple[Contestant, Contestant, Callable[[], None]]:
    """The two forwarder contestants (warm), and how to close the function; `ledger`: with
    the delivery ledger written (to moto's S3); `template`: another checkout's forwarder
    (its own code and layer, this environment's third-party packages)."""
    arn = "arn:aws:sqs:us-east-1:123456789012:bench-usage"
    env_vars = json.loads(json.dumps(setup["env_vars"]))
    env_vars["ForwarderFunction"]["LEDGER_BUCKET"] = LEDGER_BUCKET if ledger else ""
    function = load_function(
        template, "ForwarderFunction", env_vars=env_vars, extra_env=setup["env"]
    )
    _check(function.invoke(sqs_event([json.dumps(e) for e in make_events(100)], arn)))

    # The payload as Lambda's Runtime API hands it over: JSON bytes, decoded in the invocation.
    def singles() -> bytes:
        return json.dumps(sqs_event([json.dumps(e) for e in make_events(n)], arn)).encode()

    def envelopes() -> bytes:
        events = make_events(n)
        bodies = [json.dumps({"events": events[i : i + 100]}) for i in range(0, n, 100)]
        return json.dumps(sqs_event(bodies, arn)).encode()

    def invoke(payload: bytes) -> None:
        _check(function.invoke(payload))

    return Contestant(singles, invoke), Contestant(envelopes, invoke), function.close


def bench_baseline(emulator_url: str, token: str, n: int) -> Contestant:
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=8, max_retries=0))
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Stripe-Version": API_VERSION,
    }
    url = f"{emulator_url}/v2/billing/meter_event_stream"
    pool = ThreadPoolExecutor(8)

    def prepare() -> list[bytes]:
        events = make_events(n)
        return [json.dumps({"events": events[i : i + 100]}).encode() for i in range(0, n, 100)]

    def run(bodies: list[bytes]) -> None:
        statuses = list(
            pool.map(
                lambda b: session.post(url, data=b, headers=headers, timeout=30).status_code, bodies
            )
        )
        assert set(statuses) == {200}, statuses

    return Contestant(prepare, run)


def bench_floors(emulator_url: str, token: str, singles: Contestant) -> list[Contestant]:
    """The floors (see the module docstring), on the payloads the forwarder gets."""
    http = StripeHttp(emulator_url, API_VERSION, pool_size=8)
    pool = ThreadPoolExecutor(8)

    def post(texts: list[str]) -> None:
        body = ('{"events":[' + ",".join(texts) + "]}").encode()
        answer = http.post_pooled(MeterEventStream.PATH, token, body, 30)
        if answer.kind is not Kind.OK:
            raise RuntimeError(f"a floor's call failed: {answer.error}")

    def floor(read: Callable[[str], object]) -> Callable[[bytes], None]:
        def run(payload: bytes) -> None:
            calls, texts = [], []
            for record in json.loads(payload)["Records"]:
                body = record["body"]
                read(body)
                texts.append(body)
                if len(texts) == 100:
                    calls.append(pool.submit(post, texts))
                    texts = []
            if texts:
                calls.append(pool.submit(post, texts))
            for call in calls:
                call.result()

        return run

    return [
        Contestant(singles.prepare, floor(lambda body: None)),
        Contestant(singles.prepare, floor(decode_body)),
    ]


def bench_sdk(
    emulator_url: str, token: str, seconds: float, n: int
) -> tuple[dict[str, float], Contestant]:
    """Stripe's example, time-boxed (it is slow), and the batched SDK as a contestant."""
    import stripe  # the official SDK: a dev dependency, used for comparison only

    bases: Any = {"api": emulator_url, "meter_events": emulator_url}

    def example() -> None:  # Stripe's example: a new client for every send, one event a call
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            client = stripe.StripeClient(token, base_addresses=bases)
            params: Any = {"events": make_events(1)}
            client.v2.billing.meter_event_stream.create(params)
            counter[0] += 1

    counter = [0]
    cpu, wall = cpu_seconds(), time.perf_counter()
    example()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    example_result = {
        "events_per_s": counter[0] / wall,
        "cpu_s_per_100k": cpu / max(counter[0], 1) * 100_000,
    }
    client = stripe.StripeClient(token, base_addresses=bases)
    pool = ThreadPoolExecutor(8)

    def prepare() -> list[list[dict[str, Any]]]:
        events = make_events(n)
        return [events[i : i + 100] for i in range(0, n, 100)]

    def batched(chunks: list[list[dict[str, Any]]]) -> None:
        list(pool.map(lambda c: client.v2.billing.meter_event_stream.create({"events": c}), chunks))

    return example_result, Contestant(prepare, batched)


def layer_modules() -> list[str]:
    """The top-level modules of the distributions the layer locks (installed here from the same
    lock): all the forwarder may import on Lambda, besides the standard library and its own."""
    pinned = locked()
    return sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if module.isidentifier() and any(normalise(d) in pinned for d in distributions)
    )


# The cold figures import only what the layer holds. This venv has more that botocore and
# urllib3 import when they find it (awscrt, pyOpenSSL and its cryptography: 80 ms), which the
# layer lacks (make build-check holds it to the lock): such an import fails here, as on Lambda.
_LAYER_ONLY = """
import importlib.abc, sys
_allowed = set({modules!r}) | {{"meter_relay", "app"}}
class _OnlyTheLayer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in _allowed or top in sys.stdlib_module_names or top in sys.modules:
            return None
        raise ModuleNotFoundError(f"{{top}} is not in the Lambda layer", name=name)
sys.meta_path.insert(0, _OnlyTheLayer())
"""

# Run in a fresh interpreter that imports nothing but the harness before the handler.
_COLD_RUN = """
import json, resource, sys, time
from devkit.harness import load_function
{layer_only}
template, env_vars, env, first_path, batch_path = json.loads(sys.stdin.read())
function = load_function(template, "ForwarderFunction", env_vars=env_vars, extra_env=env)
first_payload, batch = open(first_path, "rb").read(), open(batch_path, "rb").read()
started = time.perf_counter()
first = function.invoke(first_payload)
first_ms = (time.perf_counter() - started) * 1000
full = function.invoke(batch)
function.close()
assert first.ok and full.ok and not full.result["batchItemFailures"], (first.error, full.error)
print(json.dumps({
    "first_invocation_ms": first_ms,
    "init_ms": first.init_duration_ms,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def cold_process_figures(setup: dict[str, Any], n: int) -> dict[str, float]:
    """In a fresh interpreter, as a new execution environment: the first invocation (handler
    import and init included) and the peak memory after a batch of `n` single-event records."""
    arn = "arn:aws:sqs:us-east-1:123456789012:bench-usage"
    with tempfile.TemporaryDirectory() as scratch:
        first, batch = Path(scratch) / "first.json", Path(scratch) / "batch.json"
        first.write_text(json.dumps(sqs_event([json.dumps(e) for e in make_events(100)], arn)))
        batch.write_text(json.dumps(sqs_event([json.dumps(e) for e in make_events(n)], arn)))
        layer_only = _LAYER_ONLY.format(modules=layer_modules())
        out = subprocess.run(  # noqa: S603 (our own interpreter and code)
            [sys.executable, "-c", _COLD_RUN.replace("{layer_only}", layer_only)],
            input=json.dumps(
                [str(TEMPLATE), setup["env_vars"], setup["env"], str(first), str(batch)]
            ),
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            env={**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING"},
        )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def precompile_project(root: Path = ROOT) -> None:
    """Compile the project's own modules to .pyc, as the layer ships them (its Makefile runs
    compileall): a machine that writes no bytecode (PYTHONDONTWRITEBYTECODE) would otherwise
    count compiling them from source, about 50 ms here, in every cold figure. pip compiled
    the dependencies when it installed them."""
    for source in (root / "layers" / "meter_relay" / "meter_relay", root / "functions"):
        compileall.compile_dir(source, quiet=1)


def import_time_ms() -> float:
    code = _LAYER_ONLY.format(modules=layer_modules()) + (
        "import time; sys.path[:0] = ['functions/forwarder', 'layers/meter_relay'];"
        "t = time.perf_counter(); import app; print((time.perf_counter() - t) * 1000)"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run(  # noqa: S603 (our own interpreter and code)
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


LATENCY_ROUNDS = 5  # batches per row at Stripe's latency: its median is the row's

# Lambda's price per request (us-east-1, arm64, 2026); per GB-second of duration, the chart's
PRICE_PER_REQUEST = 0.20 / 1_000_000


@dataclass
class LatencyRow:
    memory_mb: int
    vcpus: float | None  # the CPU the bench held itself to (None: the machine's whole cores)
    concurrency: int
    wall_ms: float
    events_per_s: float
    gb_seconds_per_batch: float
    dollars_per_million_events: float

    def to_json(self) -> dict[str, float | None]:
        return {
            "memory_mb": self.memory_mb,
            "vcpus": self.vcpus,
            "stream_concurrency": self.concurrency,
            "batch_wall_ms": self.wall_ms,
            "events_per_s": self.events_per_s,
            "gb_seconds_per_batch": self.gb_seconds_per_batch,
            "dollars_per_million_events": self.dollars_per_million_events,
        }


def bench_at_latency(
    emulator_url: str,
    setup: dict[str, Any],
    n: int,
    concurrencies: list[int],
    median_ms: float,
    sigma: float,
    memory_mb: int,
    rounds: int,
    ledger: bool = False,
) -> list[LatencyRow]:
    """The forwarder (warm) on `n` single-event records, Stripe's answers taking a log-normal
    time: one row per StreamConcurrency, each the median of `rounds` batches; `ledger`: with
    the delivery ledger written. The function runs held to the CPU Lambda gives `memory_mb`
    (devkit.cpu_share), where this machine lets the bench hold itself."""
    from devkit.emulator.client import EmulatorClient

    arn = "arn:aws:sqs:us-east-1:123456789012:bench-usage"
    emulator = EmulatorClient(emulator_url)
    rows = []
    try:
        for concurrency in concurrencies:
            # every row meets the same answer times: the latencies drawn anew from one seed
            emulator.set_faults("stream", seed=11, latency_ms=median_ms, latency_sigma=sigma)
            env_vars = json.loads(json.dumps(setup["env_vars"]))
            env_vars["ForwarderFunction"]["STREAM_CONCURRENCY"] = str(concurrency)
            env_vars["ForwarderFunction"]["LEDGER_BUCKET"] = LEDGER_BUCKET if ledger else ""
            with (
                cpu_share(vcpus_for(memory_mb)) as vcpus,
                load_function(
                    TEMPLATE, "ForwarderFunction", env_vars=env_vars, extra_env=setup["env"]
                ) as function,
            ):
                _check(function.invoke(sqs_event([json.dumps(e) for e in make_events(100)], arn)))
                walls = []
                for _ in range(rounds):
                    payload = json.dumps(
                        sqs_event([json.dumps(e) for e in make_events(n)], arn)
                    ).encode()
                    started = time.perf_counter()
                    _check(function.invoke(payload))
                    walls.append(time.perf_counter() - started)
            wall = statistics.median(walls)
            gb_seconds = memory_mb / 1024 * wall
            duration_dollars = gb_seconds * bench_chart.PRICE_PER_GB_SECOND
            per_million = (duration_dollars + PRICE_PER_REQUEST) * 1_000_000 / n
            rows.append(
                LatencyRow(
                    memory_mb, vcpus, concurrency, wall * 1000, n / wall, gb_seconds, per_million
                )
            )
    finally:
        emulator.configure(clear_faults=True)
        emulator.close()
    return rows


def template_default(name: str) -> Any:
    from devkit.harness import load_template

    return load_template(TEMPLATE)["Parameters"][name]["Default"]


def main(argv: list[str] | None = None) -> int:
    sign_as_the_layer("devkit.bench", argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per forwarder batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--ledger-rounds",
        type=int,
        default=241,
        help="rounds of the forwarder with and without the ledger, back to back",
    )
    parser.add_argument(
        "--ledger-batch-sizes",
        default=None,
        help="the ledger's cost also in batches of these many records, comma-separated "
        "(default: the template's BatchSize; empty: none)",
    )
    parser.add_argument("--sdk-seconds", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--chart", type=Path, default=CHART, help="where the chart goes (the README shows it)"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=40.0, help="median of Stripe's answer time (0: skip)"
    )
    parser.add_argument("--latency-sigma", type=float, default=0.5, help="its log-normal shape")
    parser.add_argument(
        "--concurrencies",
        default="4,8,16,32,64",
        help="StreamConcurrency values measured at that latency",
    )
    parser.add_argument(
        "--memory-sizes",
        default="1024,1769",
        help="function memory sizes (MB) measured at that latency, each at its CPU share",
    )
    args = parser.parse_args(argv)
    with ExitStack() as scope:
        emulator = scope.enter_context(
            _server_process(
                ["devkit.emulator", "--meters", str(METERS), "--request-log-size", "100"], 900
            )
        )
        moto = scope.enter_context(_server_process(["devkit.moto_server"], 900))
        setup = scope.enter_context(stack(emulator, moto))
        precompile_project()
        memory_mb = int(template_default("ForwarderMemorySize"))
        # the fresh interpreters are this process's children: held with it to the default
        # memory's CPU, as a new execution environment is (init is one thread: this matters
        # only where the default is under one vCPU)
        with cpu_share(vcpus_for(memory_mb)) as cold_vcpus:
            imported = import_time_ms()
            cold = cold_process_figures(setup, args.events)
        singles, envelopes, close = bench_forwarder(setup, args.events)
        scope.callback(close)
        with_ledger, ledger_envelopes, close_ledger = bench_forwarder(
            setup, args.events, ledger=True
        )
        scope.callback(close_ledger)
        example, sdk_batched = bench_sdk(emulator, setup["token"], args.sdk_seconds, args.events)
        baseline_run = bench_baseline(emulator, setup["token"], args.events)
        unread, decoded = bench_floors(emulator, setup["token"], singles)
        race(
            [singles, with_ledger, envelopes, baseline_run, unread, decoded, sdk_batched],
            args.events,
            args.rounds,
        )
        ledger_cost = race_pair(singles, with_ledger, args.events, args.ledger_rounds)
        envelope_ledger_cost = race_pair(
            envelopes, ledger_envelopes, args.events, args.ledger_rounds
        )
        batch_sizes = (
            [int(template_default("BatchSize"))]
            if args.ledger_batch_sizes is None
            else [int(size) for size in args.ledger_batch_sizes.split(",") if size.strip()]
        )
        cost_by_batch_size = {
            size: ledger_cost_at(setup, size, args.ledger_rounds, scope)
            for size in batch_sizes
            if size != args.events
        }
        forwarder = {
            "singles": singles.result(),
            "envelopes": envelopes.result(),
            "ledger": with_ledger.result(),
        }
        baseline = baseline_run.result()
        floors = {"unread": unread.result(), "decoded": decoded.result()}
        sdk = {"example": example, "batched": sdk_batched.result()}
        memory_sizes = [int(m) for m in args.memory_sizes.split(",")] if args.latency_ms else []
        latency_rows = [
            row
            for size in memory_sizes
            for row in bench_at_latency(
                emulator,
                setup,
                args.events,
                [int(c) for c in args.concurrencies.split(",")],
                args.latency_ms,
                args.latency_sigma,
                size,
                LATENCY_ROUNDS,
            )
        ]
        # what the ledger adds to the wall time Lambda bills, at the template's concurrency
        default_concurrency = int(template_default("StreamConcurrency"))
        ledger_rows = (
            bench_at_latency(
                emulator,
                setup,
                args.events,
                [default_concurrency],
                args.latency_ms,
                args.latency_sigma,
                memory_mb,
                LATENCY_ROUNDS,
                ledger=True,
            )
            if args.latency_ms
            else []
        )
    ratio = forwarder["singles"]["events_per_s"] / baseline["events_per_s"]
    envelope_ratio = forwarder["envelopes"]["events_per_s"] / baseline["events_per_s"]
    rows = [
        ("forwarder, 10,000 single-event records", forwarder["singles"]),
        ("forwarder, the same, writing the ledger", forwarder["ledger"]),
        ("forwarder, 100 envelopes x 100 events", forwarder["envelopes"]),
        ("baseline, pre-serialised, one session", baseline),
        ("floor: single-event bodies sent unread", floors["unread"]),
        ("floor: ... each decoded, not judged", floors["decoded"]),
        ("stripe SDK, example (new client, 1 event)", sdk["example"]),
        ("stripe SDK, 100-event batches, one client", sdk["batched"]),
    ]
    print(f"{'':44}{'events/s':>12}{'CPU s/100k':>12}")
    for name, row in rows:
        print(f"{name:44}{row['events_per_s']:>12,.0f}{row['cpu_s_per_100k']:>12.2f}")
    cold_cpu = f"{cold_vcpus:.2f} vCPU" if cold_vcpus is not None else "all cores"
    print(
        f"forwarder in a fresh process at {cold_cpu}: first invocation "
        f"{cold['first_invocation_ms']:.0f} ms "
        f"(init {cold['init_ms'] or 0:.0f} ms), peak RSS {cold['peak_rss_mb']:.0f} MB after a "
        f"{args.events:,}-record batch; handler import {imported:.0f} ms"
    )
    floor_ratios = {
        name: row["events_per_s"] / baseline["events_per_s"] for name, row in floors.items()
    }
    print(
        f"floors/baseline: unread {floor_ratios['unread']:.2f}, "
        f"decoded {floor_ratios['decoded']:.2f}"
    )
    if latency_rows:
        print(
            f"\nat Stripe's latency (log-normal, median {args.latency_ms:.0f} ms, sigma "
            f"{args.latency_sigma}), {args.events:,} single-event records, each memory size "
            "at the CPU Lambda gives it, where this machine lets the bench hold itself to it:"
        )
        header = ("MB", "vCPU", "StreamConcurrency", "batch ms", "events/s", "GB-s", "$/M")
        print(
            f"{header[0]:>6}{header[1]:>6}{header[2]:>18}{header[3]:>10}{header[4]:>10}"
            f"{header[5]:>8}{header[6]:>10}"
        )
        labelled = [(str(m.concurrency), m) for m in latency_rows]
        labelled += [(f"{m.concurrency} + ledger", m) for m in ledger_rows]
        for label, measured in labelled:
            vcpus = f"{measured.vcpus:.2f}" if measured.vcpus else "all"
            print(
                f"{measured.memory_mb:>6}{vcpus:>6}{label:>18}{measured.wall_ms:>10.0f}"
                f"{measured.events_per_s:>10,.0f}{measured.gb_seconds_per_batch:>8.3f}"
                f"{measured.dollars_per_million_events:>10.5f}"
            )
    decoded_ratio = forwarder["singles"]["events_per_s"] / floors["decoded"]["events_per_s"]
    print(
        "the ledger's CPU per event: "
        f"{describe_share(ledger_cost, f'batches of {args.events:,} records')}"
    )
    for size, cost in cost_by_batch_size.items():
        print(f"  {describe_share(cost, f'batches of {size:,} records')}")
    envelopes_of = f"envelopes of 100, {args.events:,} events a batch"
    print(f"  {describe_share(envelope_ledger_cost, envelopes_of)}")
    print(f"  (the ledger's PUTs signed by {s3_signer()}'s SigV4 signer)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "forwarder_events_per_s": forwarder["singles"]["events_per_s"],
                "forwarder_envelope_events_per_s": forwarder["envelopes"]["events_per_s"],
                "baseline_events_per_s": baseline["events_per_s"],
                "floor_unread_events_per_s": floors["unread"]["events_per_s"],
                "floor_decoded_events_per_s": floors["decoded"]["events_per_s"],
                "sdk_example_events_per_s": sdk["example"]["events_per_s"],
                "sdk_batched_events_per_s": sdk["batched"]["events_per_s"],
                "sdk_example_cpu_s_per_100k": sdk["example"]["cpu_s_per_100k"],
                "sdk_batched_cpu_s_per_100k": sdk["batched"]["cpu_s_per_100k"],
                "forwarder_cpu_s_per_100k_events": forwarder["singles"]["cpu_s_per_100k"],
                "forwarder_envelope_cpu_s_per_100k_events": forwarder["envelopes"][
                    "cpu_s_per_100k"
                ],
                "baseline_cpu_s_per_100k_events": baseline["cpu_s_per_100k"],
                "forwarder_peak_rss_mb": cold["peak_rss_mb"],
                "handler_import_ms": imported,
                "first_invocation_ms": cold["first_invocation_ms"],
                "first_invocation_init_ms": cold["init_ms"],
                "cold_start_vcpus": cold_vcpus,
                "forwarder_to_baseline": ratio,
                "envelopes_to_baseline": envelope_ratio,
                "floor_unread_to_baseline": floor_ratios["unread"],
                "floor_decoded_to_baseline": floor_ratios["decoded"],
                "forwarder_to_decoded_floor": decoded_ratio,
                "forwarder_with_ledger_cpu_s_per_100k_events": forwarder["ledger"][
                    "cpu_s_per_100k"
                ],
                "ledger_cpu_share": ledger_cost.median,
                "ledger_cpu_share_middle_half": [ledger_cost.low, ledger_cost.high],
                "ledger_cpu_share_confidence_95": list(ledger_cost.confidence),
                "ledger_paired_rounds": ledger_cost.rounds,
                "ledger_cpu_share_by_batch_size": [
                    {"events_per_batch": size, **share_json(cost)}
                    for size, cost in cost_by_batch_size.items()
                ],
                "ledger_cpu_share_envelopes": share_json(envelope_ledger_cost),
                "ledger_s3_signer": s3_signer(),
                "at_stripe_latency": {
                    "median_ms": args.latency_ms,
                    "sigma": args.latency_sigma,
                    "memory_mb": memory_mb,
                    "rows": [measured.to_json() for measured in latency_rows],
                    "with_ledger": [measured.to_json() for measured in ledger_rows],
                },
                "events_per_batch": args.events,
                "rounds": args.rounds,
            },
            indent=2,
        )
        + "\n"
    )
    results = json.loads(args.output.read_text())
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    args.chart.write_text(bench_chart.render(results, memory_mb), encoding="utf-8")
    print(f"chart: {args.chart}")
    print(f"forwarder/decoded floor = {decoded_ratio:.2f}")
    print(f"envelopes/baseline = {envelope_ratio:.2f}")
    print(f"forwarder/baseline = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
