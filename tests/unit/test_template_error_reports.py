"""template.yaml's error-report resources, as deployed (the SAM transform, resolved per stack):
what exists with each trigger chosen, least privilege, the alarms that reach a person, and names
of their own per stack."""

from __future__ import annotations

import re
from typing import Any

import pytest

from meter_relay.error_reports_function import BODIES_BUDGET_SECONDS
from meter_relay.ledger_store import SETTLED_AFTER
from tests.unit.test_template import ROOT, Deployed

FUNCTION = "ErrorReportsFunction"
BUS = "aws.partner/stripe.com/ed_61TEN0dErlaWJQzTZ16Qafnx2xSQhCzmf0WoqI1pgQSG"
REPORT_TYPES = ["v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"]
ERROR_REPORT_RESOURCES = {
    "StripeWebhookSigningSecret",
    "StripeEventsUndeliveredQueue",
    "StripeEventsUndeliveredQueuePolicy",
    FUNCTION,
    "ErrorReportsFunctionRole",
    "ErrorReportsFunctionEventInvokeConfig",
    "ErrorReportsFunctionLogs",
    "StripeErrorReportsRule",
    "StripeErrorReportsRulePermission",
    "ErrorReportsFunctionUrl",
    "ErrorReportsFunctionUrlPermission",
    "ErrorReportsFunctionUrlInvokePermission",
    "StripeRejectedEventsAlarm",
    "StripeEventsUndeliveredAlarm",
}


@pytest.fixture(scope="module")
def by_eventbridge() -> Deployed:
    return Deployed("production", StripeMode="live", StripeEventBusName=BUS)


@pytest.fixture(scope="module")
def by_webhook() -> Deployed:
    return Deployed("production", StripeMode="live", StripeWebhookEndpoint="true")


def properties(stack: Deployed, logical_id: str) -> dict[str, Any]:
    assert logical_id in stack.resources, f"{logical_id} is not deployed"
    resolved: dict[str, Any] = stack.resolve(stack.resources[logical_id].get("Properties", {}))
    return resolved


def grants(stack: Deployed, role: str) -> set[tuple[str, str]]:
    """(action, resource) of every statement of the role's inline policies, all Allow."""
    found: set[tuple[str, str]] = set()
    for policy in properties(stack, role)["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            resources = statement["Resource"]
            for action in actions if isinstance(actions, list) else [actions]:
                for resource in resources if isinstance(resources, list) else [resources]:
                    found.add((action, resource))
    return found


# ----- what is deployed, per trigger -------------------------------------------------------------
def test_by_default_only_the_table_is_deployed_for_errors_pull() -> None:
    stack = Deployed("production", StripeMode="live")
    assert not ERROR_REPORT_RESOURCES & set(stack.resources)
    table = properties(stack, "ErrorReportsTable")
    # Powertools Idempotency's DynamoDB defaults: key "id", expiry "expiration" (epoch seconds)
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    outputs = stack.template["Outputs"]
    assert outputs["ErrorReportsTableName"]["Value"] == {"Ref": "ErrorReportsTable"}


def test_a_bus_gets_a_rule_for_stripes_error_reports_with_retries_and_a_dead_letter_queue(
    by_eventbridge: Deployed,
) -> None:
    rule = properties(by_eventbridge, "StripeErrorReportsRule")
    assert rule["EventBusName"] == BUS
    assert rule["EventPattern"] == {
        "source": [{"prefix": "aws.partner/stripe.com"}],
        "detail-type": REPORT_TYPES,
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == f"<{FUNCTION}.Arn>"
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 86400}
    assert target["DeadLetterConfig"] == {"Arn": "<StripeEventsUndeliveredQueue.Arn>"}
    permission = properties(by_eventbridge, "StripeErrorReportsRulePermission")
    assert (permission["Principal"], permission["SourceArn"]) == (
        "events.amazonaws.com",
        "<StripeErrorReportsRule.Arn>",
    )
    (statement,) = properties(by_eventbridge, "StripeEventsUndeliveredQueuePolicy")[
        "PolicyDocument"
    ]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": "<StripeErrorReportsRule.Arn>"}
    }
    assert "ErrorReportsFunctionUrl" not in by_eventbridge.resources
    assert "StripeWebhookSigningSecret" not in by_eventbridge.resources


def test_a_run_that_fails_is_retried_by_lambda_then_kept_in_the_queue(
    by_eventbridge: Deployed,
) -> None:
    function = properties(by_eventbridge, FUNCTION)
    assert function["DeadLetterConfig"] == {"TargetArn": "<StripeEventsUndeliveredQueue.Arn>"}
    retries = properties(by_eventbridge, "ErrorReportsFunctionEventInvokeConfig")
    assert (retries["MaximumRetryAttempts"], retries["Qualifier"]) == (2, "$LATEST")
    queue = properties(by_eventbridge, "StripeEventsUndeliveredQueue")
    assert queue["QueueName"] == "production-stripe-events-undelivered"
    assert queue["MessageRetentionPeriod"] == 14 * 86_400
    assert queue["SqsManagedSseEnabled"] is True


def test_webhooks_get_a_public_function_url_and_an_empty_signing_secret(
    by_webhook: Deployed,
) -> None:
    url = properties(by_webhook, "ErrorReportsFunctionUrl")
    assert url == {"TargetFunctionArn": f"<{FUNCTION}.Arn>", "AuthType": "NONE"}
    invoke_url = properties(by_webhook, "ErrorReportsFunctionUrlPermission")
    assert (invoke_url["Action"], invoke_url["FunctionUrlAuthType"]) == (
        "lambda:InvokeFunctionUrl",
        "NONE",
    )
    invoke = properties(by_webhook, "ErrorReportsFunctionUrlInvokePermission")
    assert (invoke["Action"], invoke["InvokedViaFunctionUrl"]) == ("lambda:InvokeFunction", True)
    secret = properties(by_webhook, "StripeWebhookSigningSecret")
    assert secret["Name"] == "production/stripe-webhook-signing-secret"
    assert "SecretString" not in secret
    assert "GenerateSecretString" not in secret
    variables = properties(by_webhook, FUNCTION)["Environment"]["Variables"]
    assert variables["STRIPE_WEBHOOK_SECRET_ID"] == "<StripeWebhookSigningSecret>"
    outputs = by_webhook.template["Outputs"]
    assert outputs["StripeWebhookUrl"]["Value"] == {
        "Fn::GetAtt": ["ErrorReportsFunctionUrl", "FunctionUrl"]
    }
    assert "StripeErrorReportsRule" not in by_webhook.resources


def test_the_function_runs_like_the_others_with_the_contract_it_reads(
    by_eventbridge: Deployed,
) -> None:
    function = properties(by_eventbridge, FUNCTION)
    assert (function["Runtime"], function["Architectures"]) == ("python3.13", ["arm64"])
    assert function["Handler"] == "app.lambda_handler"
    assert len(function["Layers"]) == 1
    assert function["Layers"][0].startswith("<MeterRelayLayer")
    assert (ROOT / "functions" / "error_reports" / "app.py").is_file()
    assert function["Environment"]["Variables"] == {
        "POWERTOOLS_SERVICE_NAME": "production",
        "POWERTOOLS_METRICS_NAMESPACE": "MeterRelay",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "STRIPE_API_VERSION": "2026-09-30.preview",
        "STRIPE_MODE": "live",
        "STRIPE_API_BASE": "https://api.stripe.com",
        "STRIPE_SECRET_ID": "<StripeSecretKey>",
        "STRIPE_WEBHOOK_SECRET_ID": "",  # no webhook endpoint: webhooks are refused
        "DEAD_LETTER_QUEUE_URL": "<UsageDeadLetterQueue>",
        "ERROR_REPORTS_TABLE": "<ErrorReportsTable>",
        "LEDGER_BUCKET": "<LedgerBucket>",  # bodies read (each event as sent), samples recorded
    }  # no METER_CATALOG_PATH: the ledger holds each reported event as sent
    group = properties(by_eventbridge, "ErrorReportsFunctionLogs")
    assert group["RetentionInDays"] == "30"


def test_a_report_has_time_to_wait_for_the_ledger_to_settle(by_eventbridge: Deployed) -> None:
    """The forwarder writes its ledger object before its own Timeout: a report waits that long
    past its window (SETTLED_AFTER) for its events' bodies, within the function's Timeout."""
    function = properties(by_eventbridge, "ErrorReportsFunction")
    forwarder = properties(by_eventbridge, "ForwarderFunction")
    assert SETTLED_AFTER.total_seconds() >= float(forwarder["Timeout"]) + 10
    assert SETTLED_AFTER.total_seconds() + 10 <= BODIES_BUDGET_SECONDS
    assert float(function["Timeout"]) >= BODIES_BUDGET_SECONDS + 20


# ----- least privilege ---------------------------------------------------------------------------
def test_the_function_may_do_exactly_what_it_needs(
    by_eventbridge: Deployed, by_webhook: Deployed
) -> None:
    table = "<ErrorReportsTable.Arn>"
    common = {
        ("secretsmanager:GetSecretValue", "<StripeSecretKey>"),
        ("sqs:SendMessage", "<UsageDeadLetterQueue.Arn>"),
        ("sqs:SendMessage", "<StripeEventsUndeliveredQueue.Arn>"),  # Lambda's async DLQ
        ("dynamodb:GetItem", table),
        ("dynamodb:PutItem", table),
        ("dynamodb:UpdateItem", table),
        ("dynamodb:DeleteItem", table),
    }
    assert grants(by_eventbridge, "ErrorReportsFunctionRole") == common
    assert grants(by_webhook, "ErrorReportsFunctionRole") == common | {
        ("secretsmanager:GetSecretValue", "<StripeWebhookSigningSecret>")
    }
    for stack in (by_eventbridge, by_webhook):
        role = properties(stack, "ErrorReportsFunctionRole")
        assert role["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
        ]


# ----- alarms -----------------------------------------------------------------------------------
def alarm(stack: Deployed, name: str) -> dict[str, Any]:
    (found,) = [a for a in stack.alarms().values() if a["AlarmName"] == name]
    return found


def summed(found: dict[str, Any], expression: str, period: int) -> list[str]:
    """The alarm's metric math: its one expression, over hidden sums of the function's metrics
    (namespace MeterRelay, the stack as service) in `period` seconds; their names, by id order."""
    queries = {m["Id"]: m for m in found["Metrics"]}
    (shown,) = [m for m in found["Metrics"] if "Expression" in m]
    assert shown["Expression"] == expression
    names = []
    for metric_id in re.findall(r"FILL\((\w+), 0\)", expression):
        if queries[metric_id]["MetricStat"]["Metric"]["Namespace"] == "AWS/Lambda":
            continue  # the function's own errors, checked by the test
        stat = queries[metric_id]["MetricStat"]
        assert (stat["Metric"]["Namespace"], stat["Metric"]["Dimensions"]) == (
            "MeterRelay",
            [{"Name": "service", "Value": "production"}],
        )
        assert (stat["Period"], stat["Stat"]) == (period, "Sum")
        assert queries[metric_id]["ReturnData"] is False
        names.append(stat["Metric"]["MetricName"])
    return names


def test_any_event_stripe_reports_rejected_in_five_minutes_reaches_a_person(
    by_webhook: Deployed,
) -> None:
    rejected = alarm(by_webhook, "production-stripe-rejected-events")
    expression = "FILL(rejected, 0) + FILL(unavailable, 0) + FILL(mismatched, 0)"
    assert summed(rejected, expression, 300) == [
        "StripeRejectedEvents",
        "ErrorReportsUnavailable",
        "ErrorReportCountMismatch",  # counts per code not adding up
    ]
    assert (rejected["ComparisonOperator"], rejected["Threshold"]) == (
        "GreaterThanOrEqualToThreshold",
        1,
    )
    assert rejected["AlarmActions"] == rejected["OKActions"] == ["<AlarmTopic>"]
    assert "meter-relay --stack-name production dlq list" in rejected["AlarmDescription"]


def test_events_that_could_not_be_processed_reach_a_person_with_the_way_back(
    by_eventbridge: Deployed,
) -> None:
    undelivered = alarm(by_eventbridge, "production-stripe-events-undelivered")
    assert (undelivered["Namespace"], undelivered["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert undelivered["Dimensions"] == [
        {"Name": "QueueName", "Value": "<StripeEventsUndeliveredQueue.QueueName>"}
    ]
    assert (undelivered["ComparisonOperator"], undelivered["Threshold"]) == (
        "GreaterThanThreshold",
        0,
    )
    assert "errors pull --since" in undelivered["AlarmDescription"]
    assert undelivered["AlarmActions"] == undelivered["OKActions"] == ["<AlarmTopic>"]


def test_a_function_that_keeps_failing_on_the_webhook_route_reaches_a_person(
    by_webhook: Deployed,
) -> None:
    """The webhook route has no queue that would fill: Stripe retries, then drops the report.
    Failures, crashes and timeouts (Lambda's Errors: they emit no metric of their own), and
    refused webhooks (a rolled signing secret) page, three in an hour."""
    failing = alarm(by_webhook, "production-error-reports-failing")
    expression = "FILL(failed, 0) + FILL(errors, 0) + FILL(refused, 0)"
    assert summed(failing, expression, 3600) == ["ErrorReportsFailed", "WebhooksRefused"]
    (errors,) = [m for m in failing["Metrics"] if m["Id"] == "errors"]
    assert errors["MetricStat"]["Metric"] == {
        "Namespace": "AWS/Lambda",
        "MetricName": "Errors",
        "Dimensions": [{"Name": "FunctionName", "Value": "<ErrorReportsFunction>"}],
    }
    assert (errors["MetricStat"]["Period"], errors["MetricStat"]["Stat"]) == (3600, "Sum")
    assert (failing["ComparisonOperator"], failing["Threshold"]) == (
        "GreaterThanOrEqualToThreshold",
        3,
    )
    assert failing["AlarmActions"] == failing["OKActions"] == ["<AlarmTopic>"]
    assert "errors pull --since" in failing["AlarmDescription"]


def test_an_existing_topic_gets_these_alarms_too() -> None:
    pager = "arn:aws:sns:eu-west-1:111122223333:pager"
    stack = Deployed(
        "production", StripeMode="live", StripeWebhookEndpoint="true", AlarmTopicArn=pager
    )
    for name in ("production-stripe-rejected-events", "production-stripe-events-undelivered"):
        assert alarm(stack, name)["AlarmActions"] == [pager]


def test_the_metrics_the_alarm_watches_are_ones_the_function_emits(
    by_webhook: Deployed,
) -> None:
    source = (ROOT / "layers/meter_relay/meter_relay/error_reports_function.py").read_text()
    emitted = set(re.findall(r'add_metric\(\s*"(\w+)"', source))
    emitted |= set(re.findall(r'single_metric\(\s*name="(\w+)"', source))
    watched = {
        m["MetricStat"]["Metric"]["MetricName"]
        for name in ("production-stripe-rejected-events", "production-error-reports-failing")
        for m in alarm(by_webhook, name)["Metrics"]
        if "MetricStat" in m and m["MetricStat"]["Metric"]["Namespace"] == "MeterRelay"
    }
    assert watched <= emitted
    assert "StripeRejectedEventsByCode" in emitted


# ----- per stack ---------------------------------------------------------------------------------
def test_two_stacks_share_no_error_report_name() -> None:
    names = {}
    for stack_name in ("staging", "production"):
        stack = Deployed(
            stack_name,
            StripeMode="test" if stack_name == "staging" else "live",
            StripeEventBusName=BUS,
            StripeWebhookEndpoint="true",
        )
        names[stack_name] = {
            properties(stack, "StripeWebhookSigningSecret")["Name"],
            properties(stack, "StripeEventsUndeliveredQueue")["QueueName"],
            properties(stack, "StripeRejectedEventsAlarm")["AlarmName"],
            properties(stack, "StripeEventsUndeliveredAlarm")["AlarmName"],
        }
        assert all(name.startswith(f"{stack_name}") for name in names[stack_name])
    assert names["staging"] & names["production"] == set()
