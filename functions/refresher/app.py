"""Scheduled refresher: keeps the meter event session token in SSM fresh.

Invoked by EventBridge Scheduler (`{}`), by an operator (`{"force": true}`) or by the
forwarder when its stored session went stale or Stripe refused it (`{"session_only": true,
"replace_session_id": "..."}`: the meter catalog is left to the schedule).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay.observability import logger, metrics
from meter_relay.refresher import refresher


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return refresher().handle(event)
