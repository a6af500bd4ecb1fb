"""`make local-env`: what events/env.json points at, for `make invoke` and `sam local invoke`.

    python -m devkit.local_env [--moto-port 5000] [--emulator-port 12111] [--lifetime S]

Starts moto server and the Stripe emulator (with devkit/local_meters.json) on the ports that
events/env.json names, creates the queues (usage, with its RedrivePolicy to the DLQ), the
secret (a test key), the error reports' table and webhook signing secret (a new whsec_...)
that env.json names, prints the variables a shell needs, and serves until Ctrl-C or the
lifetime ends. The names come from env.json itself, so the two never disagree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3

from devkit.emulator.app import EmulatorServer
from devkit.emulator.client import DEFAULT_SECRET_KEY
from devkit.harness import load_template
from devkit.local_error_reports import create_table, new_signing_secret
from devkit.local_stack import TEMPLATE, _parameter_default, _queue_arn
from devkit.moto_server import MotoServer, aws_env

ROOT = Path(__file__).resolve().parent.parent
ENV_JSON = ROOT / "events" / "env.json"
METERS = Path(__file__).resolve().parent / "local_meters.json"
MOTO_ADDRESS = "http://127.0.0.1:5000"
EMULATOR_ADDRESS = "http://127.0.0.1:12111"


def load_env_vars(moto_url: str = MOTO_ADDRESS, emulator_url: str = EMULATOR_ADDRESS) -> Any:
    """events/env.json, with its moto and emulator addresses moved to the given ones."""
    text = ENV_JSON.read_text(encoding="utf-8")
    return json.loads(text.replace(MOTO_ADDRESS, moto_url).replace(EMULATOR_ADDRESS, emulator_url))


def _names(env_vars: dict[str, dict[str, str]], variable: str) -> set[str]:
    """What the functions' variables of this name name (a queue's name for a queue URL)."""
    found = set()
    for variables in env_vars.values():
        value = variables.get(variable)
        if value:
            found.add(
                urlsplit(value).path.rsplit("/", 1)[-1] if "_QUEUE_URL" in variable else value
            )
    return found


def provision(env_vars: dict[str, dict[str, str]], moto_url: str) -> dict[str, str]:
    """Create the queues and secrets env.json names; returns queue name -> URL."""
    env = aws_env(moto_url)
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    sqs = session.client("sqs", endpoint_url=moto_url)
    secretsmanager = session.client("secretsmanager", endpoint_url=moto_url)
    usage, dead = _names(env_vars, "USAGE_QUEUE_URL"), _names(env_vars, "DEAD_LETTER_QUEUE_URL")
    if len(dead) != 1:
        raise ValueError(f"env.json should name one dead-letter queue, not {sorted(dead)}")
    (dlq_name,) = dead
    urls = {dlq_name: sqs.create_queue(QueueName=dlq_name)["QueueUrl"]}
    redrive = {
        "deadLetterTargetArn": _queue_arn(sqs, urls[dlq_name]),
        "maxReceiveCount": int(_parameter_default(load_template(TEMPLATE), "MaxReceiveCount")),
    }
    for name in usage:
        urls[name] = sqs.create_queue(
            QueueName=name, Attributes={"RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
    for secret in _names(env_vars, "STRIPE_SECRET_ID"):
        secretsmanager.create_secret(Name=secret, SecretString=DEFAULT_SECRET_KEY)
    for secret in _names(env_vars, "STRIPE_WEBHOOK_SECRET_ID"):
        secretsmanager.create_secret(Name=secret, SecretString=new_signing_secret())
    resources = load_template(TEMPLATE)["Resources"]
    dynamodb = session.client("dynamodb", endpoint_url=moto_url)
    for table in _names(env_vars, "ERROR_REPORTS_TABLE"):
        create_table(dynamodb, resources, table)
    return urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make local-env", description=__doc__.split("\n\n")[0])
    parser.add_argument("--moto-port", type=int, default=5000)
    parser.add_argument("--emulator-port", type=int, default=12111)
    parser.add_argument("--lifetime", type=float, default=None, help="stop after S seconds")
    args = parser.parse_args(argv)
    meters = json.loads(METERS.read_text(encoding="utf-8"))
    with (
        MotoServer(port=args.moto_port) as moto,
        EmulatorServer(meters=meters, port=args.emulator_port) as emulator,
    ):
        env_vars = load_env_vars(moto.endpoint_url, emulator.url)
        provision(env_vars, moto.endpoint_url)
        env_json = "events/env.json"
        if (moto.endpoint_url, emulator.url) != (MOTO_ADDRESS, EMULATOR_ADDRESS):
            # other ports: a copy of env.json that names them
            copy = Path(tempfile.gettempdir()) / f"meter-relay-env-{os.getpid()}.json"
            copy.write_text(json.dumps(env_vars, indent=2), encoding="utf-8")
            env_json = str(copy)
        print(f"moto server {moto.endpoint_url}, Stripe emulator {emulator.url}")
        print("in another shell:")
        for name, value in aws_env(moto.endpoint_url).items():
            print(f"  export {name}={value}")
        for function, sample in [
            ("RefresherFunction", "refresher-force.json"),
            ("ForwarderFunction", "forwarder-mixed-batch.json"),
            ("ErrorReportsFunction", "error-reports-eventbridge-triggered.json"),
        ]:
            print(f"  make invoke FN={function} EVENT=events/{sample} ENV_VARS={env_json}")
        sys.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait(args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
