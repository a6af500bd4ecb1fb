"""Powertools Logger and Metrics shared by every function (settings from POWERTOOLS_* env)."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "meter-relay")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "MeterRelay")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
