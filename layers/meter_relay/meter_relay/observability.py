"""Powertools Logger and Metrics shared by every function (settings from POWERTOOLS_* env)."""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "meter-relay")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "MeterRelay")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# At DEBUG, botocore logs each request's parameters and each response's body: the Stripe key
# (GetSecretValue) and the session token (GetParameter, PutParameter) with them. Whatever level
# the root logger gets (LoggingConfig's ApplicationLogLevel DEBUG, a local basicConfig), botocore
# stays at INFO, so that nothing secret is ever logged (docs/design.md, principle 5).
logging.getLogger("botocore").setLevel(logging.INFO)
