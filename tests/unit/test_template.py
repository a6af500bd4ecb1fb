"""template.yaml: the properties the design relies on, read from the template itself.

Each test names one promise (no event lost, nothing counted twice, the secret key in one place,
least privilege, operators warned) and fails if the template stops keeping it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import pytest

from devkit.checkov_gate import sam_transform
from devkit.harness import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"

FORWARDER = "ForwarderFunction"
REFRESHER = "RefresherFunction"
SECRET = "StripeSecretKey"
TOKEN_PARAMETER_ARN = {
    "Fn::Sub": (
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
        ":parameter${SessionTokenParameterName}"
    )
}
FOURTEEN_DAYS = 14 * 24 * 3600
DEFAULT_TOKEN_PARAMETER = "/meter-relay/stripe/meter-event-session"

# The configuration contract (DESIGN.md and the brief): variable -> template value.
FORWARDER_ENV: dict[str, Any] = {
    "STRIPE_METER_EVENTS_BASE": {"Ref": "StripeMeterEventsBase"},
    "STRIPE_API_VERSION": {"Ref": "StripeApiVersion"},
    "SESSION_TOKEN_PARAMETER": {"Ref": "SessionTokenParameterName"},
    "DEAD_LETTER_QUEUE_URL": {"Ref": "UsageDeadLetterQueue"},
    "REFRESHER_FUNCTION_NAME": {"Ref": REFRESHER},
    "STREAM_CONCURRENCY": {"Ref": "StreamConcurrency"},
    "METER_KEYS": {"Ref": "MeterKeys"},
    "VALUE_RULE": {"Ref": "ValueRule"},
}
REFRESHER_ENV: dict[str, Any] = {
    "STRIPE_API_BASE": {"Ref": "StripeApiBase"},
    "STRIPE_API_VERSION": {"Ref": "StripeApiVersion"},
    "STRIPE_SECRET_ID": {"Ref": SECRET},
    "SESSION_TOKEN_PARAMETER": {"Ref": "SessionTokenParameterName"},
    "REFRESH_MARGIN_SECONDS": {"Ref": "RefreshMarginSeconds"},
}
POWERTOOLS_ENV = {
    "POWERTOOLS_SERVICE_NAME": "meter-relay",
    "POWERTOOLS_METRICS_NAMESPACE": "MeterRelay",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
PARAMETER_DEFAULTS: dict[str, object] = {
    "StripeApiBase": "https://api.stripe.com",
    "StripeMeterEventsBase": "https://meter-events.stripe.com",
    "SessionTokenParameterName": DEFAULT_TOKEN_PARAMETER,
    "StreamConcurrency": 8,
    "MeterKeys": "{}",
    "ValueRule": "positive_integer",
    "RefreshMarginSeconds": 420,
    "RefreshSchedule": "rate(5 minutes)",
    "BatchSize": 1000,
    "MaximumConcurrency": 10,
    "QueueAgeAlarmThresholdSeconds": 900,
    "AlarmTopicArn": "",
}

SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9])(?:sk_(?:live|test)_|rk_)")


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


def resource(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    found = template["Resources"].get(logical_id)
    assert isinstance(found, dict), f"{logical_id} is missing from template.yaml"
    return found


def props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties = resource(template, logical_id).get("Properties")
    assert isinstance(properties, dict), f"{logical_id} has no Properties"
    return properties


def globals_function(template: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], (template.get("Globals") or {}).get("Function") or {})


def function_setting(template: dict[str, Any], logical_id: str, name: str) -> Any:
    """A function property as deployed: the function's own, else Globals.Function's."""
    own = props(template, logical_id)
    return own[name] if name in own else globals_function(template).get(name)


def environment(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    """Globals.Function's variables merged with the function's (the function's win)."""
    merged: dict[str, Any] = {}
    for source in (globals_function(template), props(template, logical_id)):
        merged.update(((source.get("Environment") or {}).get("Variables")) or {})
    return merged


def function_ids(template: dict[str, Any]) -> list[str]:
    return [
        name
        for name, res in template["Resources"].items()
        if res.get("Type") == "AWS::Serverless::Function"
    ]


def statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    """The function's inline policy statements (its own Policies, or those of the role its
    `Role` names). Managed policy names and SAM policy templates are refused: their contents
    are not in the template, so they could grant anything."""
    role = props(template, logical_id).get("Role")
    if role is not None:
        assert isinstance(role, dict), f"{logical_id}.Role: {role!r}"
        assert "Fn::GetAtt" in role, f"{logical_id}.Role: {role!r}"
        role_id, attribute = role["Fn::GetAtt"]
        assert attribute == "Arn"
        role_props = props(template, role_id)
        policies = [policy["PolicyDocument"] for policy in role_props.get("Policies") or []]
    else:
        policies = props(template, logical_id).get("Policies") or []
    assert isinstance(policies, list), f"{logical_id}.Policies should be a list"
    found: list[dict[str, Any]] = []
    for policy in policies:
        inline = isinstance(policy, dict) and "Statement" in policy
        assert inline, f"{logical_id}: only inline policy documents are allowed, got {policy!r}"
        found.extend(policy["Statement"])
    assert found, f"{logical_id} grants nothing at all"
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def actions(statement: dict[str, Any]) -> list[str]:
    assert "NotAction" not in statement, f"NotAction is too broad: {statement}"
    return [str(action) for action in as_list(statement["Action"])]


def grants(template: dict[str, Any], logical_id: str) -> set[tuple[str, str]]:
    """(action, resource) pairs of the function's Allow statements, resources as JSON."""
    pairs: set[tuple[str, str]] = set()
    for statement in statements(template, logical_id):
        assert statement.get("Effect") == "Allow", statement
        assert "NotResource" not in statement, f"NotResource is too broad: {statement}"
        for action in actions(statement):
            for res in as_list(statement["Resource"]):
                pairs.add(grant(action, res))
    return pairs


def grant(action: str, res: Any) -> tuple[str, str]:
    return (action, json.dumps(res, sort_keys=True))


def action_allows(action: str, operation: str) -> bool:
    """Whether an IAM Action pattern (wildcards, any case) covers `service:Operation`."""
    return fnmatchcase(operation.lower(), action.lower())


def references(node: Any, logical_id: str) -> bool:
    """Whether a template value refers to a resource (Ref, GetAtt, or ${Id} in a Sub)."""
    if isinstance(node, dict):
        if node.get("Ref") == logical_id:
            return True
        get_att = node.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] == logical_id:
            return True
        sub = node.get("Fn::Sub")
        text = sub[0] if isinstance(sub, list) else sub
        if isinstance(text, str) and re.search(r"\$\{" + re.escape(logical_id) + r"[.}]", text):
            return True
        return any(references(value, logical_id) for value in node.values())
    if isinstance(node, list):
        return any(references(value, logical_id) for value in node)
    return False


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def sqs_event(template: dict[str, Any]) -> dict[str, Any]:
    events = props(template, FORWARDER).get("Events") or {}
    sqs = [event for event in events.values() if event.get("Type") == "SQS"]
    assert len(sqs) == 1, f"the forwarder should have exactly one SQS event, has {len(sqs)}"
    return cast(dict[str, Any], sqs[0]["Properties"])


def parameter(template: dict[str, Any], name: str) -> dict[str, Any]:
    found = template.get("Parameters", {}).get(name)
    assert isinstance(found, dict), f"parameter {name} is missing"
    return found


def alarms(template: dict[str, Any], namespace: str, metric: str) -> list[dict[str, Any]]:
    return [
        res["Properties"]
        for res in template["Resources"].values()
        if res.get("Type") == "AWS::CloudWatch::Alarm"
        and res["Properties"].get("Namespace") == namespace
        and res["Properties"].get("MetricName") == metric
    ]


def the_alarm(
    template: dict[str, Any], namespace: str, metric: str, dimensions: list[dict[str, Any]]
) -> dict[str, Any]:
    found = [a for a in alarms(template, namespace, metric) if a.get("Dimensions") == dimensions]
    assert len(found) == 1, f"expected one alarm on {namespace}/{metric} {dimensions}: {found}"
    return found[0]


# --- the SQS event source and the queues ---------------------------------------------------


def test_sqs_event_reports_batch_item_failures(template: dict[str, Any]) -> None:
    event = sqs_event(template)
    assert event["Queue"] == {"Fn::GetAtt": ["UsageQueue", "Arn"]}
    assert "ReportBatchItemFailures" in event.get("FunctionResponseTypes", [])


def test_sqs_event_batching_and_concurrency_come_from_parameters(template: dict[str, Any]) -> None:
    event = sqs_event(template)
    assert event["BatchSize"] == {"Ref": "BatchSize"}
    assert event["MaximumBatchingWindowInSeconds"] == {"Ref": "BatchingWindowSeconds"}
    assert event["ScalingConfig"]["MaximumConcurrency"] == {"Ref": "MaximumConcurrency"}

    batch = parameter(template, "BatchSize")
    assert (batch["Default"], batch["MinValue"], batch["MaxValue"]) == (1000, 1, 10000)
    window = parameter(template, "BatchingWindowSeconds")
    assert window["Default"] >= 1, "BatchSize over 10 needs a batching window of at least 1 s"
    assert window["MaxValue"] <= 300
    concurrency = parameter(template, "MaximumConcurrency")
    assert (concurrency["MinValue"], concurrency["MaxValue"]) == (2, 1000)
    assert concurrency["MinValue"] <= concurrency["Default"] <= concurrency["MaxValue"]


def test_batching_window_rule_guards_large_batches(template: dict[str, Any]) -> None:
    rules = template.get("Rules") or {}
    guarding = [
        rule
        for rule in rules.values()
        if references(rule.get("RuleCondition"), "BatchingWindowSeconds")
        and any(references(a["Assert"], "BatchSize") for a in rule.get("Assertions", []))
    ]
    assert guarding, "a Rule should refuse BatchingWindowSeconds 0 with BatchSize over 10"


def test_visibility_timeout_is_at_least_six_forwarder_timeouts(template: dict[str, Any]) -> None:
    visibility = props(template, "UsageQueue")["VisibilityTimeout"]
    timeout = function_setting(template, FORWARDER, "Timeout")
    assert isinstance(visibility, int)
    assert isinstance(timeout, int)
    assert visibility >= 6 * timeout


@pytest.mark.parametrize("queue", ["UsageQueue", "UsageDeadLetterQueue"])
def test_queues_are_encrypted_and_keep_messages_fourteen_days(
    template: dict[str, Any], queue: str
) -> None:
    properties = props(template, queue)
    assert resource(template, queue)["Type"] == "AWS::SQS::Queue"
    assert properties.get("SqsManagedSseEnabled") is True
    assert properties.get("MessageRetentionPeriod") == FOURTEEN_DAYS
    assert not properties.get("FifoQueue"), "the design assumes standard queues"


def test_usage_queue_redrives_to_the_dead_letter_queue(template: dict[str, Any]) -> None:
    redrive = props(template, "UsageQueue")["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}
    assert redrive["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    max_receive = parameter(template, "MaxReceiveCount")
    assert max_receive["Type"] == "Number"
    assert 1 <= max_receive["MinValue"] <= max_receive["Default"] <= max_receive["MaxValue"]


def test_dead_letter_queue_accepts_redrive_only_from_the_usage_queue(
    template: dict[str, Any],
) -> None:
    allow = props(template, "UsageDeadLetterQueue")["RedriveAllowPolicy"]
    assert allow["redrivePermission"] == "byQueue"
    queue_name = props(template, "UsageQueue")["QueueName"]["Fn::Sub"]
    usage_arn = f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{queue_name}"
    assert allow["sourceQueueArns"] == [{"Fn::Sub": usage_arn}]


# --- functions and their configuration -----------------------------------------------------


@pytest.mark.parametrize("function", [FORWARDER, REFRESHER])
def test_functions_run_python313_on_arm64_with_the_shared_layer(
    template: dict[str, Any], function: str
) -> None:
    assert function_setting(template, function, "Runtime") == "python3.13"
    assert function_setting(template, function, "Architectures") == ["arm64"]
    assert function_setting(template, function, "Handler") == "app.lambda_handler"
    layers = as_list(props(template, function).get("Layers") or []) + as_list(
        globals_function(template).get("Layers") or []
    )
    assert layers.count({"Ref": "MeterRelayLayer"}) == 1
    code_uri = props(template, function)["CodeUri"]
    assert (ROOT / code_uri / "app.py").is_file()


@pytest.mark.parametrize(
    ("function", "contract"), [(FORWARDER, FORWARDER_ENV), (REFRESHER, REFRESHER_ENV)]
)
def test_every_contract_variable_is_set_on_its_function(
    template: dict[str, Any], function: str, contract: dict[str, Any]
) -> None:
    env = environment(template, function)
    for name, value in {**contract, **POWERTOOLS_ENV}.items():
        assert env.get(name) == value, (
            f"{function}: {name} should be {value!r}, is {env.get(name)!r}"
        )


def test_contract_parameters_have_their_documented_defaults(template: dict[str, Any]) -> None:
    for name, default in PARAMETER_DEFAULTS.items():
        assert parameter(template, name).get("Default") == default, name
    assert parameter(template, "ValueRule")["AllowedValues"] == ["positive_integer", "decimal"]
    assert isinstance(json.loads(parameter(template, "MeterKeys")["Default"]), dict)
    pattern = parameter(template, "SessionTokenParameterName")["AllowedPattern"]
    assert pattern.startswith("^/"), "the SSM ARN is built as parameter${Name}: Name needs a /"
    assert re.fullmatch(pattern, DEFAULT_TOKEN_PARAMETER)
    assert not re.fullmatch(pattern, "meter-relay/no-leading-slash")


def test_refresher_runs_on_a_schedule_with_an_empty_event(template: dict[str, Any]) -> None:
    events = props(template, REFRESHER)["Events"].values()
    schedules = [event["Properties"] for event in events if event["Type"] == "ScheduleV2"]
    assert len(schedules) == 1
    assert schedules[0]["ScheduleExpression"] == {"Ref": "RefreshSchedule"}
    assert json.loads(schedules[0]["Input"]) == {}
    assert props(template, REFRESHER)["Timeout"] <= 60


def test_refresh_margin_outlasts_the_schedule_interval(template: dict[str, Any]) -> None:
    schedule = parameter(template, "RefreshSchedule")["Default"]
    match = re.fullmatch(r"rate\((\d+) minutes?\)", schedule)
    assert match, schedule
    assert parameter(template, "RefreshMarginSeconds")["Default"] > int(match[1]) * 60


# --- the secret key in one place, least privilege ------------------------------------------


def test_forwarder_grants_nothing_on_secrets_manager(template: dict[str, Any]) -> None:
    for statement in statements(template, FORWARDER):
        for action in actions(statement):
            assert not action.lower().startswith("secretsmanager:"), statement
            assert not action_allows(action, "secretsmanager:GetSecretValue"), statement
        assert not references(statement.get("Resource"), SECRET), statement
        assert not any(":secretsmanager:" in text for text in strings(statement)), statement


def test_forwarder_does_not_know_where_the_secret_is(template: dict[str, Any]) -> None:
    env = environment(template, FORWARDER)
    assert "STRIPE_SECRET_ID" not in env
    assert not references(env, SECRET)


def test_forwarder_reads_only_the_session_token_parameter(template: dict[str, Any]) -> None:
    ssm = [
        s
        for s in statements(template, FORWARDER)
        if any(a.lower().startswith("ssm:") for a in actions(s))
    ]
    assert len(ssm) == 1
    assert actions(ssm[0]) == ["ssm:GetParameter"]
    assert as_list(ssm[0]["Resource"]) == [TOKEN_PARAMETER_ARN]


def test_forwarder_grants_exactly_what_it_needs(template: dict[str, Any]) -> None:
    usage_queue = {"Fn::GetAtt": ["UsageQueue", "Arn"]}
    expected = {
        grant("sqs:ReceiveMessage", usage_queue),
        grant("sqs:DeleteMessage", usage_queue),
        grant("sqs:GetQueueAttributes", usage_queue),
        grant("ssm:GetParameter", TOKEN_PARAMETER_ARN),
        grant("sqs:SendMessage", {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}),
        grant("lambda:InvokeFunction", {"Fn::GetAtt": [REFRESHER, "Arn"]}),
    }
    assert grants(template, FORWARDER) == expected


def test_refresher_reads_the_secret_and_writes_the_token(template: dict[str, Any]) -> None:
    expected = {
        grant("secretsmanager:GetSecretValue", {"Ref": SECRET}),
        grant("ssm:GetParameter", TOKEN_PARAMETER_ARN),
        grant("ssm:PutParameter", TOKEN_PARAMETER_ARN),
    }
    assert grants(template, REFRESHER) == expected


def test_no_function_has_a_wildcard_action(template: dict[str, Any]) -> None:
    for function in function_ids(template):
        for statement in statements(template, function):
            for action in actions(statement):
                assert "*" not in action, f"{function}: {statement}"


def test_no_deployed_role_has_a_managed_policy_beyond_logging() -> None:
    """As CloudFormation gets it, after the SAM transform: SAM attaches managed policies of
    its own (for an SQS event, AWSLambdaSQSQueueExecutionRole: SQS rights on every queue)."""
    deployed = sam_transform(TEMPLATE)
    roles = {
        logical_id: resource["Properties"]
        for logical_id, resource in deployed["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
    }
    assert len(roles) >= len(function_ids(load_template(TEMPLATE)))
    for logical_id, role in roles.items():
        for arn in role.get("ManagedPolicyArns", []):
            text = arn if isinstance(arn, str) else arn.get("Fn::Sub", "")  # SAM's or ours
            assert text.endswith("/service-role/AWSLambdaBasicExecutionRole"), (logical_id, arn)


def test_secret_holds_no_value_in_the_template(template: dict[str, Any]) -> None:
    properties = props(template, SECRET)
    assert resource(template, SECRET)["Type"] == "AWS::SecretsManager::Secret"
    assert "GenerateSecretString" not in properties, "a generated string is not a Stripe key"
    assert properties.get("SecretString", "REPLACE_WITH_STRIPE_SECRET_KEY") == (
        "REPLACE_WITH_STRIPE_SECRET_KEY"
    )


def test_secret_pattern_recognises_stripe_keys() -> None:
    assert SECRET_LIKE.search("sk_live_51Habc")
    assert SECRET_LIKE.search("Bearer sk_test_x123")
    assert SECRET_LIKE.search("rk_live_abc")
    assert not SECRET_LIKE.search("https://api.stripe.com")
    assert not SECRET_LIKE.search("/meter-relay/stripe/meter-event-session")


def test_no_environment_value_looks_like_a_secret_key(template: dict[str, Any]) -> None:
    values: dict[str, str] = {}
    for function in function_ids(template):
        for name, value in environment(template, function).items():
            # A parameter reference deploys its default unless overridden.
            if isinstance(value, dict) and set(value) == {"Ref"}:
                value = template.get("Parameters", {}).get(value["Ref"], {}).get("Default", "")
            for text in strings(value):
                values[f"{function}.{name}"] = text
    assert {f"{FORWARDER}.METER_KEYS", f"{REFRESHER}.STRIPE_API_BASE"} <= set(values)
    leaks = {name: text for name, text in values.items() if SECRET_LIKE.search(text)}
    assert not leaks


def test_no_parameter_default_or_saved_override_looks_like_a_secret_key(
    template: dict[str, Any],
) -> None:
    defaults = [str(p.get("Default", "")) for p in template.get("Parameters", {}).values()]
    assert not [d for d in defaults if SECRET_LIKE.search(d)]
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))
    assert not [s for s in strings(config) if SECRET_LIKE.search(s)]


def test_producer_policy_allows_sending_to_the_usage_queue_only(template: dict[str, Any]) -> None:
    document = props(template, "ProducerPolicy")["PolicyDocument"]
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow"
        assert as_list(statement["Resource"]) == [{"Fn::GetAtt": ["UsageQueue", "Arn"]}]
        assert set(actions(statement)) <= {"sqs:SendMessage", "sqs:GetQueueUrl"}
    assert any("sqs:SendMessage" in actions(s) for s in document["Statement"])


# --- alarms and outputs --------------------------------------------------------------------


def test_alarm_on_any_message_in_the_dead_letter_queue(template: dict[str, Any]) -> None:
    alarm = the_alarm(
        template,
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["UsageDeadLetterQueue", "QueueName"]}}],
    )
    assert alarm["Statistic"] == "Maximum"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["TreatMissingData"] == "notBreaching"


def test_alarm_on_old_messages_in_the_usage_queue(template: dict[str, Any]) -> None:
    alarm = the_alarm(
        template,
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["UsageQueue", "QueueName"]}}],
    )
    assert alarm["Threshold"] == {"Ref": "QueueAgeAlarmThresholdSeconds"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


def test_alarm_on_refresh_failures_matches_powertools_metrics(template: dict[str, Any]) -> None:
    env = globals_function(template)["Environment"]["Variables"]
    alarm = the_alarm(
        template,
        env["POWERTOOLS_METRICS_NAMESPACE"],
        "RefreshFailures",
        [{"Name": "service", "Value": env["POWERTOOLS_SERVICE_NAME"]}],
    )
    assert alarm["Statistic"] == "Sum"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "GreaterThanOrEqualToThreshold",
        1,
    )
    assert alarm["TreatMissingData"] == "notBreaching"


def test_alarm_on_refresher_errors(template: dict[str, Any]) -> None:
    alarm = the_alarm(
        template, "AWS/Lambda", "Errors", [{"Name": "FunctionName", "Value": {"Ref": REFRESHER}}]
    )
    assert alarm["Statistic"] == "Sum"
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_alarms_notify_the_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    condition = template["Conditions"]["HasAlarmTopic"]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    expected = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    every = [
        res["Properties"]
        for res in template["Resources"].values()
        if res["Type"] == "AWS::CloudWatch::Alarm"
    ]
    assert len(every) >= 4
    for alarm in every:
        assert alarm["AlarmActions"] == expected, alarm


def test_outputs_tell_producers_where_the_queue_is(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["UsageQueueUrl"]["Value"] == {"Ref": "UsageQueue"}
    assert outputs["UsageQueueArn"]["Value"] == {"Fn::GetAtt": ["UsageQueue", "Arn"]}
    for name in ("UsageQueueUrl", "UsageQueueArn", "ProducerPolicyArn"):
        assert "producer" in outputs[name]["Description"].lower(), name
    assert outputs["ProducerPolicyArn"]["Value"] == {"Ref": "ProducerPolicy"}


def test_outputs_for_operators(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    expected = {
        "DeadLetterQueueUrl": {"Ref": "UsageDeadLetterQueue"},
        "DeadLetterQueueArn": {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]},
        "StripeSecretArn": {"Ref": SECRET},
        "SessionTokenParameterName": {"Ref": "SessionTokenParameterName"},
        "ForwarderFunctionName": {"Ref": FORWARDER},
        "RefresherFunctionName": {"Ref": REFRESHER},
        "MeterRelayLayerArn": {"Ref": "MeterRelayLayer"},
    }
    for name, value in expected.items():
        assert outputs[name]["Value"] == value, name
        assert outputs[name].get("Description"), name


def test_samconfig_deploys_the_stack_sensibly() -> None:
    config = tomllib.loads(SAMCONFIG.read_text(encoding="utf-8"))["default"]
    assert config["global"]["parameters"]["stack_name"] == "meter-relay"
    deploy = config["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is True


def test_every_function_has_a_log_group_with_bounded_retention(template: dict[str, Any]) -> None:
    groups = {
        logical_id: resource["Properties"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Logs::LogGroup"
    }
    named = {str(p["LogGroupName"]) for p in groups.values()}
    for function in function_ids(template):
        assert str({"Fn::Sub": f"/aws/lambda/${{{function}}}"}) in named, function
    for properties in groups.values():
        assert properties["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
