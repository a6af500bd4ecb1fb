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
# The session parameter: the one given, else one named after the stack (never shared).
TOKEN_PARAMETER = {
    "Fn::If": [
        "HasSessionTokenParameterName",
        {"Ref": "SessionTokenParameterName"},
        {"Fn::Sub": "/${AWS::StackName}/stripe/meter-event-session"},
    ]
}
TOKEN_PARAMETER_ARN = {
    "Fn::Sub": [
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${Name}",
        {"Name": TOKEN_PARAMETER},
    ]
}
CATALOG_PATH = {"Fn::Sub": "/${AWS::StackName}/stripe/meter-catalog"}
CATALOG_ARN = {
    "Fn::Sub": (
        "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
        ":parameter/${AWS::StackName}/stripe/meter-catalog"
    )
}
CATALOG_PARTS_ARN = {"Fn::Sub": CATALOG_ARN["Fn::Sub"] + "/*"}
FOURTEEN_DAYS = 14 * 24 * 3600
GIVEN_TOKEN_PARAMETER = "/billing/meter-event-session"

# The configuration contract (docs/design.md): variable -> template value.
FORWARDER_ENV: dict[str, Any] = {
    "STRIPE_METER_EVENTS_BASE": {"Ref": "StripeMeterEventsBase"},
    "STRIPE_API_VERSION": {"Ref": "StripeApiVersion"},
    "STRIPE_MODE": {"Ref": "StripeMode"},
    "SESSION_TOKEN_PARAMETER": TOKEN_PARAMETER,
    "DEAD_LETTER_QUEUE_URL": {"Ref": "UsageDeadLetterQueue"},
    "REFRESHER_FUNCTION_NAME": {"Ref": REFRESHER},
    "STREAM_CONCURRENCY": {"Ref": "StreamConcurrency"},
    "METER_CATALOG_PATH": CATALOG_PATH,
    "METER_KEYS": {"Ref": "MeterKeys"},
    "VALUE_RULE": {"Ref": "ValueRule"},
}
REFRESHER_ENV: dict[str, Any] = {
    "STRIPE_API_BASE": {"Ref": "StripeApiBase"},
    "STRIPE_API_VERSION": {"Ref": "StripeApiVersion"},
    "STRIPE_SECRET_ID": {"Ref": SECRET},
    "STRIPE_MODE": {"Ref": "StripeMode"},
    "SESSION_TOKEN_PARAMETER": TOKEN_PARAMETER,
    "REFRESH_MARGIN_SECONDS": {"Ref": "RefreshMarginSeconds"},
    "METER_CATALOG_PATH": CATALOG_PATH,
}
POWERTOOLS_ENV = {
    "POWERTOOLS_SERVICE_NAME": {"Ref": "AWS::StackName"},
    "POWERTOOLS_METRICS_NAMESPACE": "MeterRelay",
    "POWERTOOLS_LOG_LEVEL": "INFO",
}
PARAMETER_DEFAULTS: dict[str, object] = {
    "StripeApiBase": "https://api.stripe.com",
    "StripeMeterEventsBase": "https://meter-events.stripe.com",
    "SessionTokenParameterName": "",
    "StreamConcurrency": 64,
    "ForwarderMemorySize": 1769,
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
    # its messages are hidden from their receive: the window and the forwarder's timeout must
    # leave the queue's visibility timeout room for Lambda's retries of a throttled invocation
    queue = template["Resources"]["UsageQueue"]["Properties"]
    timeout = template["Resources"]["ForwarderFunction"]["Properties"]["Timeout"]
    assert window["MaxValue"] + timeout <= queue["VisibilityTimeout"] - 4 * timeout
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
    # the SSM ARN is built as parameter${Name}: a given name needs its leading /
    assert re.fullmatch(pattern, GIVEN_TOKEN_PARAMETER)
    assert re.fullmatch(pattern, "")
    assert not re.fullmatch(pattern, "meter-relay/no-leading-slash")
    mode = parameter(template, "StripeMode")
    assert mode["AllowedValues"] == ["test", "live"]
    assert "Default" not in mode, "the mode is stated at deploy, never guessed"


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


def test_forwarder_reads_only_the_session_token_and_the_meter_catalog(
    template: dict[str, Any],
) -> None:
    ssm = {
        (action, json.dumps(resource, sort_keys=True))
        for s in statements(template, FORWARDER)
        for action in actions(s)
        if action.lower().startswith("ssm:")
        for resource in as_list(s["Resource"])
    }
    assert ssm == {
        grant("ssm:GetParameter", TOKEN_PARAMETER_ARN),
        grant("ssm:GetParametersByPath", CATALOG_ARN),
    }


def test_the_meter_catalog_path_goes_exactly_to_the_functions_that_may_read_it(
    template: dict[str, Any],
) -> None:
    """A function told where the catalog is but not allowed to read it would fail at run
    time; one allowed but not told has a grant it never uses."""
    readers = {
        logical_id
        for logical_id in function_ids(template)
        if grant("ssm:GetParametersByPath", CATALOG_ARN) in grants(template, logical_id)
    }
    told = {
        logical_id
        for logical_id in function_ids(template)
        if "METER_CATALOG_PATH" in environment(template, logical_id)
    }
    assert readers == {FORWARDER, REFRESHER, "DlqReplayFunction", "DlqCancelFunction"}
    assert told == readers
    for logical_id in told:
        assert environment(template, logical_id)["METER_CATALOG_PATH"] == CATALOG_PATH


def test_forwarder_grants_exactly_what_it_needs(template: dict[str, Any]) -> None:
    usage_queue = {"Fn::GetAtt": ["UsageQueue", "Arn"]}
    expected = {
        grant("sqs:ReceiveMessage", usage_queue),
        grant("sqs:DeleteMessage", usage_queue),
        grant("sqs:GetQueueAttributes", usage_queue),
        grant("ssm:GetParameter", TOKEN_PARAMETER_ARN),
        grant("ssm:GetParametersByPath", CATALOG_ARN),
        grant("sqs:SendMessage", {"Fn::GetAtt": ["UsageDeadLetterQueue", "Arn"]}),
        grant("lambda:InvokeFunction", {"Fn::GetAtt": [REFRESHER, "Arn"]}),
    }
    assert grants(template, FORWARDER) == expected


def test_refresher_reads_the_secret_and_writes_the_token(template: dict[str, Any]) -> None:
    expected = {
        grant("secretsmanager:GetSecretValue", {"Ref": SECRET}),
        grant("ssm:GetParameter", TOKEN_PARAMETER_ARN),
        grant("ssm:PutParameter", TOKEN_PARAMETER_ARN),
        grant("ssm:GetParametersByPath", CATALOG_ARN),
        grant("ssm:PutParameter", CATALOG_PARTS_ARN),
        grant("ssm:DeleteParameters", CATALOG_PARTS_ARN),
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


# --- alarms, the alarm topic, the dashboard: as deployed (the SAM transform), for a stack -----


class Deployed:
    """The SAM-transformed template resolved for one stack name and parameter values.

    Parameters and pseudo parameters resolve to their values, conditions and Fn::If are
    evaluated, and a resource's Ref or GetAtt becomes a readable token (`<UsageQueue>`,
    `<UsageQueue.QueueName>`) that a test can compare, as CloudFormation's values would be.
    """

    def __init__(self, stack: str, **parameters: str) -> None:
        self.stack = stack
        self.template = sam_transform(TEMPLATE)
        declared = self.template["Parameters"]
        unknown = set(parameters) - set(declared)
        assert not unknown, unknown
        self.values = {
            name: str(parameters.get(name, spec.get("Default", "")))
            for name, spec in declared.items()
        }
        self.values.update(
            {
                "AWS::StackName": stack,
                "AWS::Region": "eu-west-1",
                "AWS::AccountId": "111122223333",
                "AWS::Partition": "aws",
                "AWS::URLSuffix": "amazonaws.com",
            }
        )
        self.resources: dict[str, Any] = {
            logical_id: resource
            for logical_id, resource in self.template["Resources"].items()
            if "Condition" not in resource or self.condition(resource["Condition"])
        }

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.resolve(item) for item in node if item != {"Ref": "AWS::NoValue"}]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {key: self.resolve(value) for key, value in node.items()}
        ((key, arg),) = node.items()
        if key == "Ref":
            return self.values.get(arg, f"<{arg}>")
        if key == "Fn::GetAtt":
            target, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return f"<{target}.{attribute}>"
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else arg
            local = {name: str(self.resolve(value)) for name, value in variables.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in local:
                    return local[name]
                if name in self.values:
                    return self.values[name]
                return f"<{name}>"

            return re.sub(r"\$\{([^}!][^}]*)\}", substitute, text)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::Equals":
            return self.resolve(arg[0]) == self.resolve(arg[1])
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(item) for item in arg)
        if key == "Fn::Or":
            return any(self.resolve(item) for item in arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Join":
            return arg[0].join(str(self.resolve(item)) for item in arg[1])
        return {key: self.resolve(arg)}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: self.resolve(resource.get("Properties", {}))
            for logical_id, resource in self.resources.items()
            if resource["Type"] == kind
        }

    def alarms(self) -> dict[str, dict[str, Any]]:
        return self.of_type("AWS::CloudWatch::Alarm")


@pytest.fixture(scope="module")
def production() -> Deployed:
    return Deployed("production", StripeMode="live", AlarmEmail="oncall@example.com")


def metric_of(
    alarm: dict[str, Any], metric_id: str | None = None
) -> tuple[str, str, dict[str, str]]:
    """(namespace, metric name, dimensions) of a plain alarm, or of one metric of a math one."""
    if metric_id is None:
        metric = alarm
    else:
        (query,) = [m for m in alarm["Metrics"] if m["Id"] == metric_id]
        metric = query["MetricStat"]["Metric"]
    dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
    return metric["Namespace"], metric["MetricName"], dimensions


# What each alarm watches and when it fires: (metric or expression, dimensions, statistic,
# period, comparison, threshold, periods, missing data). `dead letters` counts hidden letters
# too: `dlq list` hides what it reads, and the alarm must not flip to OK meanwhile.
USAGE = {"QueueName": "<UsageQueue.QueueName>"}
DLQ = {"QueueName": "<UsageDeadLetterQueue.QueueName>"}
SERVICE = {"service": "production"}
PLAIN_ALARMS = {
    "production-dead-letters-aging": (
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", DLQ),
        ("Maximum", 300, "GreaterThanThreshold", "259200", 1, "notBreaching"),
    ),
    "production-usage-waiting": (
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", USAGE),
        ("Maximum", 60, "GreaterThanThreshold", "900", 3, "notBreaching"),
    ),
    "production-session-expiring": (
        ("MeterRelay", "SessionSecondsLeft", SERVICE),
        ("Minimum", 600, "LessThanThreshold", 300, 1, "breaching"),
    ),
    "production-refresh-failing": (
        ("MeterRelay", "RefreshFailures", SERVICE),
        ("Sum", 300, "GreaterThanOrEqualToThreshold", 1, 1, "notBreaching"),
    ),
    "production-stripe-mode-mismatch": (
        ("MeterRelay", "SessionModeMismatch", SERVICE),
        ("Sum", 300, "GreaterThanOrEqualToThreshold", 1, 1, "notBreaching"),
    ),
    "production-refresher-errors": (
        ("AWS/Lambda", "Errors", {"FunctionName": f"<{REFRESHER}>"}),
        ("Sum", 300, "GreaterThanOrEqualToThreshold", 1, 2, "notBreaching"),
    ),
    "production-forwarder-errors": (
        ("AWS/Lambda", "Errors", {"FunctionName": f"<{FORWARDER}>"}),
        ("Sum", 300, "GreaterThanOrEqualToThreshold", 1, 1, "notBreaching"),
    ),
    "production-ledger-gap": (
        ("MeterRelay", "LedgerGap", SERVICE),
        ("Sum", 300, "GreaterThanOrEqualToThreshold", 1, 1, "notBreaching"),
    ),
}


def test_each_plain_alarm_watches_its_metric_of_this_stack(production: Deployed) -> None:
    alarms = {alarm["AlarmName"]: alarm for alarm in production.alarms().values()}
    for name, (metric, rule) in PLAIN_ALARMS.items():
        alarm = alarms[name]
        assert metric_of(alarm) == metric, name
        statistic, period, comparison, threshold, periods, missing = rule
        assert (alarm["Statistic"], alarm["Period"], alarm["ComparisonOperator"]) == (
            statistic,
            period,
            comparison,
        ), name
        assert (alarm["Threshold"], alarm["EvaluationPeriods"]) == (threshold, periods), name
        assert alarm["TreatMissingData"] == missing, name


def test_the_dead_letter_alarm_counts_hidden_letters_too(production: Deployed) -> None:
    (alarm,) = [a for a in production.alarms().values() if a["AlarmName"].endswith("-letters")]
    (returned,) = [m for m in alarm["Metrics"] if m.get("ReturnData", True)]
    assert returned["Expression"] == "visible + hidden"
    assert metric_of(alarm, "visible") == ("AWS/SQS", "ApproximateNumberOfMessagesVisible", DLQ)
    assert metric_of(alarm, "hidden") == ("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", DLQ)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    # the text names the supported recovery and warns against the console's redrive
    text = alarm["AlarmDescription"]
    assert "meter-relay --stack-name production dlq redrive" in text
    assert "Start DLQ redrive" in text
    assert "billed twice" in text


def share_alarm(
    production: Deployed, name: str, part: tuple[str, str], whole: tuple[str, str]
) -> float:
    """A math alarm on `part` as a percentage of `whole` ((id, metric name) of this stack's
    metrics), both summed over 5 minutes, fired by 3 periods of 3 above its threshold, which
    it returns."""
    (alarm,) = [a for a in production.alarms().values() if a["AlarmName"] == name]
    (returned,) = [m for m in alarm["Metrics"] if m.get("ReturnData", True)]
    (part_id, part_name), (whole_id, whole_name) = part, whole
    assert returned["Expression"] == f"IF({whole_id} > 0, 100 * {part_id} / {whole_id}, 0)"
    assert metric_of(alarm, part_id) == ("MeterRelay", part_name, SERVICE)
    assert metric_of(alarm, whole_id) == ("MeterRelay", whole_name, SERVICE)
    stats = {(m["MetricStat"]["Period"], m["MetricStat"]["Stat"]) for m in alarm["Metrics"][1:]}
    assert stats == {(300, "Sum")}
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 3)
    assert (alarm["ComparisonOperator"], alarm["TreatMissingData"]) == (
        "GreaterThanThreshold",
        "notBreaching",
    )
    threshold: float = alarm["Threshold"]
    return threshold


def test_sustained_rate_limiting_is_a_share_of_calls_over_fifteen_minutes(
    production: Deployed,
) -> None:
    calls = ("limited", "StreamCallsRateLimited"), ("calls", "StreamCalls")
    assert share_alarm(production, "production-stripe-rate-limiting", *calls) == 10


def test_a_delivery_that_keeps_failing_pages_whatever_the_queues_age_shows(
    production: Deployed,
) -> None:
    """SQS leaves a message received three times or more out of the usage queue's age, and a
    failing forwarder receives each one every 6 minutes: the age alarm alone may never fire
    during an outage. Most received events sent back to the queue for 15 minutes pages."""
    events = ("retried", "EventsRetried"), ("received", "EventsReceived")
    assert share_alarm(production, "production-delivery-failing", *events) == 50


def test_every_alarm_is_named_after_the_stack_and_reaches_its_topic(production: Deployed) -> None:
    alarms = production.alarms()
    assert len(alarms) == len(PLAIN_ALARMS) + 3
    topics = production.of_type("AWS::SNS::Topic")
    assert list(topics) == ["AlarmTopic"]
    assert topics["AlarmTopic"]["TopicName"] == "production-alarms"
    for alarm in alarms.values():
        assert alarm["AlarmName"].startswith("production-")
        assert alarm["AlarmActions"] == alarm["OKActions"] == ["<AlarmTopic>"]
    (subscription,) = production.of_type("AWS::SNS::Subscription").values()
    assert subscription == {
        "TopicArn": "<AlarmTopic>",
        "Protocol": "email",
        "Endpoint": "oncall@example.com",
    }


def test_only_this_stacks_alarms_may_publish_to_its_topic(production: Deployed) -> None:
    (policy,) = production.of_type("AWS::SNS::TopicPolicy").values()
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert statement["Action"] == "sns:Publish"
    pattern = statement["Condition"]["ArnLike"]["aws:SourceArn"]
    for alarm in production.alarms().values():
        arn = f"arn:aws:cloudwatch:eu-west-1:111122223333:alarm:{alarm['AlarmName']}"
        assert fnmatchcase(arn, pattern), arn
    assert not fnmatchcase("arn:aws:cloudwatch:eu-west-1:111122223333:alarm:staging-x", pattern)


def test_an_existing_topic_replaces_the_stacks_own() -> None:
    pager = "arn:aws:sns:eu-west-1:111122223333:pager"
    stack = Deployed("production", StripeMode="live", AlarmTopicArn=pager, AlarmEmail="a@b.co")
    assert stack.of_type("AWS::SNS::Topic") == {}
    assert stack.of_type("AWS::SNS::Subscription") == {}
    for alarm in stack.alarms().values():
        assert alarm["AlarmActions"] == alarm["OKActions"] == [pager]


def test_without_an_email_the_topic_is_made_and_nobody_is_subscribed() -> None:
    stack = Deployed("production", StripeMode="live")
    assert list(stack.of_type("AWS::SNS::Topic")) == ["AlarmTopic"]
    assert stack.of_type("AWS::SNS::Subscription") == {}


def _emitted_metric_names() -> set[str]:
    """Every metric name the library emits (add_metric, add_samples, single_metric)."""
    library = ROOT / "layers" / "meter_relay" / "meter_relay"
    names: set[str] = set()
    for path in library.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r'add_(?:metric|samples)\(\s*"(\w+)"', text))
        names.update(re.findall(r'single_metric\(\s*name="(\w+)"', text))
    publish = (library / "forwarder.py").read_text(encoding="utf-8").split("def _publish")[1]
    names.update(re.findall(r'^\s+"([A-Z]\w+)":', publish.split("\n\n\n")[0], re.MULTILINE))
    return names


def test_every_custom_metric_watched_or_shown_is_one_the_code_emits(production: Deployed) -> None:
    emitted = _emitted_metric_names()
    assert {"EventsReceived", "SessionSecondsLeft", "SessionModeMismatch"} <= emitted
    watched: set[str] = set()
    for alarm in production.alarms().values():
        for query in alarm.get("Metrics", [alarm]):
            metric = query.get("MetricStat", {}).get("Metric", query)
            if metric.get("Namespace") == "MeterRelay":
                watched.add(metric["MetricName"])
    (dashboard,) = production.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.loads(dashboard["DashboardBody"])
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            if line[0] == "MeterRelay":
                watched.add(line[1])
            if isinstance(line[0], dict) and "SEARCH" in line[0]["expression"]:
                watched.update(re.findall(r"MetricName=\"(\w+)\"", line[0]["expression"]))
    assert watched - emitted == set()
    assert "EventsDeadLetteredByCode" in watched


def test_the_dashboard_shows_this_stacks_queues_metrics_and_alarms(production: Deployed) -> None:
    (dashboard,) = production.of_type("AWS::CloudWatch::Dashboard").values()
    assert dashboard["DashboardName"] == "production-meter-relay"
    widgets = json.loads(dashboard["DashboardBody"])["widgets"]
    shown = {alarm for w in widgets if w["type"] == "alarm" for alarm in w["properties"]["alarms"]}
    assert shown == {f"<{logical_id}.Arn>" for logical_id in production.alarms()}
    titles = " | ".join(w["properties"]["title"] for w in widgets)
    for subject in ("Usage queue", "Dead-letter queue", "latency", "429", "Session", "error code"):
        assert subject in titles, subject
    for widget in widgets:
        assert widget["properties"].get("region", "eu-west-1") == "eu-west-1"
        for line in widget["properties"].get("metrics", []):
            if line[0] == "MeterRelay":
                assert line[2:4] == ["service", "production"], line
            elif line[0] == "AWS/SQS":
                assert line[2:4] in (
                    ["QueueName", USAGE["QueueName"]],
                    ["QueueName", DLQ["QueueName"]],
                )
    latency = next(w for w in widgets if "latency" in w["properties"]["title"])
    stats = {line[-1]["stat"] for line in latency["properties"]["metrics"]}
    assert stats == {"p50", "p99"}


def test_two_stacks_of_the_defaults_share_no_name() -> None:
    """Staging (sk_test) and production (sk_live) in one account: no session parameter, metric
    dimension, alarm, topic, dashboard, queue, secret or schedule of one is the other's."""
    names = {}
    for stack in ("staging", "production"):
        deployed = Deployed(stack, StripeMode="test" if stack == "staging" else "live")
        found: set[str] = set()
        env = deployed.resolve(
            deployed.template["Resources"][FORWARDER]["Properties"]["Environment"]
        )
        found.add(env["Variables"]["SESSION_TOKEN_PARAMETER"])
        found.add(env["Variables"]["POWERTOOLS_SERVICE_NAME"])
        for kind, key in [
            ("AWS::CloudWatch::Alarm", "AlarmName"),
            ("AWS::SNS::Topic", "TopicName"),
            ("AWS::CloudWatch::Dashboard", "DashboardName"),
            ("AWS::SQS::Queue", "QueueName"),
            ("AWS::SecretsManager::Secret", "Name"),
            ("AWS::Scheduler::Schedule", "Name"),
            ("AWS::Lambda::LayerVersion", "LayerName"),
        ]:
            found.update(properties[key] for properties in deployed.of_type(kind).values())
        names[stack] = found
    assert "/staging/stripe/meter-event-session" in names["staging"]
    assert len(names["staging"]) == len(names["production"]) >= 17
    assert names["staging"] & names["production"] == set()


def test_a_given_session_parameter_name_is_used_as_given() -> None:
    deployed = Deployed("production", StripeMode="live", SessionTokenParameterName="/billing/s")
    for function in (FORWARDER, REFRESHER):
        env = deployed.resolve(
            deployed.template["Resources"][function]["Properties"]["Environment"]
        )
        assert env["Variables"]["SESSION_TOKEN_PARAMETER"] == "/billing/s"


def test_nobody_can_start_the_consoles_dlq_redrive(production: Deployed) -> None:
    """It gives moved messages new ids, and identifiers derived from them change: billed twice."""
    (policy,) = production.of_type("AWS::SQS::QueuePolicy").values()
    assert policy["Queues"] == ["<UsageDeadLetterQueue>"]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "sqs:StartMessageMoveTask"
    assert statement["Resource"] == "<UsageDeadLetterQueue.Arn>"


def test_a_stripe_outage_of_twelve_hours_dead_letters_nothing(template: dict[str, Any]) -> None:
    """A message that could not be delivered is received again after the visibility timeout;
    MaxReceiveCount receives must outlast a long Stripe outage, and the queue keeps it longer."""
    visibility = props(template, "UsageQueue")["VisibilityTimeout"]
    receives = parameter(template, "MaxReceiveCount")["Default"]
    assert receives * visibility >= 12 * 3600
    assert receives * visibility < props(template, "UsageQueue")["MessageRetentionPeriod"]


def test_dlq_functions_finish_before_sam_remote_invokes_read_timeout(
    template: dict[str, Any],
) -> None:
    """botocore (sam remote invoke's client) reads for DEFAULT_TIMEOUT seconds and retries a
    read timeout: a function that runs longer is invoked again while it still runs."""
    from botocore.endpoint import DEFAULT_TIMEOUT

    for function in ("DlqReplayFunction", "DlqCancelFunction"):
        assert function_setting(template, function, "Timeout") < DEFAULT_TIMEOUT, function


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
        "SessionTokenParameterName": TOKEN_PARAMETER,
        "StripeMode": {"Ref": "StripeMode"},
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


def test_the_ledger_bucket_is_private_encrypted_tls_only_and_kept_longer_than_35_days(
    production: Deployed,
) -> None:
    (bucket,) = production.of_type("AWS::S3::Bucket").values()
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"
    ] == {"SSEAlgorithm": "AES256"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rules = {rule["Id"]: rule for rule in bucket["LifecycleConfiguration"]["Rules"]}
    rule = rules["keep-longer-than-stripes-window"]
    assert "Prefix" not in rule
    assert int(rule["ExpirationInDays"]) > 35
    (policy,) = production.of_type("AWS::S3::BucketPolicy").values()
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert (deny["Effect"], deny["Condition"]) == (
        "Deny",
        {"Bool": {"aws:SecureTransport": "false"}},
    )
    assert production.resources["LedgerBucket"]["DeletionPolicy"] == "Retain"


def test_the_forwarder_may_only_add_objects_under_events(production: Deployed) -> None:
    policy = production.of_type("AWS::IAM::RolePolicy")["ForwarderLedgerPolicy"]
    assert policy["RoleName"] == f"<{FORWARDER.replace('Function', 'Role')}>"
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Effect"], statement["Action"]) == ("Allow", "s3:PutObject")
    assert statement["Resource"] == "<LedgerBucket.Arn>/events/*"
    env = production.resolve(
        production.template["Resources"][FORWARDER]["Properties"]["Environment"]
    )
    assert env["Variables"]["LEDGER_BUCKET"] == "<LedgerBucket>"


def test_without_the_ledger_there_is_no_bucket_and_nothing_to_write_to() -> None:
    stack = Deployed("production", StripeMode="live", DeliveryLedger="disabled")
    assert stack.of_type("AWS::S3::Bucket") == {}
    assert stack.of_type("AWS::IAM::RolePolicy") == {}
    env = stack.resolve(stack.template["Resources"][FORWARDER]["Properties"]["Environment"])
    assert env["Variables"]["LEDGER_BUCKET"] == ""


def test_a_dashboard_names_no_alarm_the_stack_does_not_have() -> None:
    for options in ({"DeliveryLedger": "disabled"}, {"StripeWebhookEndpoint": "true"}):
        stack = Deployed("production", StripeMode="live", **options)
        (dashboard,) = stack.of_type("AWS::CloudWatch::Dashboard").values()
        widgets = json.loads(dashboard["DashboardBody"])["widgets"]
        shown = {
            alarm for w in widgets if w["type"] == "alarm" for alarm in w["properties"]["alarms"]
        }
        assert shown == {f"<{logical_id}.Arn>" for logical_id in stack.alarms()}, options
