"""Dead-letter tools as Lambda functions: replay and cancel (`sam remote invoke`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from meter_relay import dlq_tools
from meter_relay.observability import logger


@logger.inject_lambda_context(clear_state=True)
def replay_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dlq_tools.replay(event, context)


@logger.inject_lambda_context(clear_state=True)
def cancel_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dlq_tools.cancel_events(event, context)
