"""Runs the producer helper as a service would, under any Python from 3.9: test_producer_versions.py
starts it with an interpreter's `python -S`, boto3 (and nothing else) on PYTHONPATH, and a lone
copy of producer.py named meter_relay_producer.py beside it.

    python -S producer_check.py < {"queue_url": ..., "refusals": [SendMessageBatch answers]}
    (AWS_ENDPOINT_URL and credentials in the environment)

It sends events to the queue (moto server) and tries the failure paths through botocore's
Stubber, then prints one JSON document of what happened; the test reads the queue and judges.
Python 3.9 syntax only (ruff's per-file target says so).
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

import boto3
import meter_relay_producer as producer  # type: ignore[import-not-found]
from botocore.stub import Stubber

EVENTS = 23
ENVELOPE_SIZE = 5


def usage() -> list[dict[str, Any]]:
    """Every third event without an identifier: the helper gives it one."""
    return [
        {
            "event_name": "api_requests",
            "payload": {"stripe_customer_id": f"cus_{i % 3}", "value": i + 1},
            **({} if i % 3 == 0 else {"identifier": f"p-{i}"}),
            **({"timestamp": 1780315200 + i} if i % 2 else {}),
        }
        for i in range(EVENTS)
    ]


def summary(report: Any) -> dict[str, Any]:
    return {
        "sent": [[m.message_id, list(m.events)] for m in report.sent],
        "failed": [[list(events), reason] for events, reason in report.failed],
    }


def main(queue_url: str, refusals: list[dict[str, Any]]) -> dict[str, Any]:
    sqs = boto3.client("sqs")
    events = usage()
    untouched = json.dumps(events)
    sent = producer.UsageProducer(queue_url, sqs, envelope_size=ENVELOPE_SIZE).send(events)

    # SendMessageBatch's answers to three events, some refusing entries (from the test)
    stubbed = boto3.client("sqs")
    with Stubber(stubbed) as stub:
        for answer in refusals:
            stub.add_response("send_message_batch", answer)
        sleeps: list[float] = []
        refused = producer.UsageProducer(queue_url, stubbed, sleep=sleeps.append).send(events[:3])
        stub.assert_no_pending_responses()

    # an event too big for any message: reported, never sent (the stub has no answer to give)
    huge = {**events[1], "payload": {"stripe_customer_id": "cus_0", "note": "x" * 300_000}}
    with Stubber(boto3.client("sqs")) as stub:
        oversized = producer.UsageProducer(queue_url, stub.client).send([huge])

    return {
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "caller_events_untouched": json.dumps(events) == untouched,
        "sent": summary(sent),
        "refused": {**summary(refused), "sleeps": len(sleeps)},
        "oversized": summary(oversized),
    }


if __name__ == "__main__":
    print(json.dumps(main(**json.load(sys.stdin))))
