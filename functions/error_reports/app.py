"""Stripe's error reports (EventBridge rule, or a webhook through the Function URL) into the
dead-letter queue. Thin: the library does the work; clients, pools and the cached secrets live
across warm invocations.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay.error_reports_function import error_reports
from meter_relay.observability import logger, metrics


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return error_reports().handle(event, context)
