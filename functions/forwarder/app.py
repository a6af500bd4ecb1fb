"""SQS-triggered forwarder: delivers usage events to Stripe's meter event stream.

Thin: the library does the work; clients, pools and the session token live across warm
invocations in the cached Forwarder.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay.forwarder import Forwarder
from meter_relay.observability import logger, metrics


@functools.cache
def _forwarder() -> Forwarder:
    return Forwarder.from_environment()


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(_forwarder().handle(event, context))
