"""template.yaml: the delivery ledger as Athena queries it (Glue tables with partition
projection, a workgroup with its result location), and who may read and write what in it, as
deployed for a stack (the SAM transform resolved by `Deployed`)."""

from __future__ import annotations

from typing import Any

import pytest

from meter_relay.ledger import SUFFIX
from meter_relay.ledger_sql import EVENTS, PARTITIONS, TABLES
from tests.unit.test_template import Deployed

BUCKET_ARN = "<LedgerBucket.Arn>"
WORKGROUP_ARN = "arn:aws:athena:eu-west-1:111122223333:workgroup/<LedgerWorkGroup>"
GLUE = "arn:aws:glue:eu-west-1:111122223333"
TABLE_IDS = {
    "events": "LedgerEventsTable",
    "cancellations": "LedgerCancellationsTable",
    "rejections": "LedgerRejectionsTable",
}


STACK_UUID = "51af3dc0-da77-11e4-872e-1234567db123"


class Stack(Deployed):
    """Deployed, with the functions the Glue database's name is made of, and a stack id."""

    def __init__(self, stack: str, **parameters: str) -> None:
        super().__init__(stack, **parameters)
        self.values["AWS::StackId"] = (
            f"arn:aws:cloudformation:eu-west-1:111122223333:stack/{stack}/{STACK_UUID}"
        )

    def resolve(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Fn::Split":
                return str(self.resolve(arg[1])).split(arg[0])
            if key == "Fn::Join":
                items = self.resolve(arg[1])
                return arg[0].join(str(self.resolve(item)) for item in items)
            if key == "Fn::Select":
                return self.resolve(arg[1])[int(arg[0])]
        return super().resolve(node)

    def properties(self, logical_id: str) -> dict[str, Any]:
        assert logical_id in self.resources, f"{logical_id} is not deployed"
        found: dict[str, Any] = self.resolve(self.resources[logical_id].get("Properties", {}))
        return found


@pytest.fixture(scope="module")
def production() -> Stack:
    return Stack("production-eu", StripeMode="live", StripeEventBusName="aws.partner/stripe.com/x")


def grants(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(action, resource) of a policy document's statements, every one an Allow."""
    found = set()
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow", statement
        actions, resources = statement["Action"], statement["Resource"]
        for action in actions if isinstance(actions, list) else [actions]:
            assert "*" not in action, statement
            for resource in resources if isinstance(resources, list) else [resources]:
                found.add((action, resource))
    return found


# ----- the tables --------------------------------------------------------------------------------
def test_each_ledger_table_has_the_columns_the_queries_read(production: Stack) -> None:
    for table in TABLES:
        described = production.properties(TABLE_IDS[table.name])
        assert described["DatabaseName"] == "<LedgerDatabase>"
        table_input = described["TableInput"]
        assert table_input["Name"] == table.name
        storage = table_input["StorageDescriptor"]
        columns = [(c["Name"], c["Type"]) for c in storage["Columns"]]
        assert columns == list(table.columns), table.name
        assert [k["Name"] for k in table_input["PartitionKeys"]] == list(PARTITIONS)
        assert storage["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
        if table is EVENTS:
            # the payload's keys as producers wrote them: customer_key and value_key find them
            assert storage["SerdeInfo"]["Parameters"] == {"case.insensitive": "false"}
        assert storage["Location"] == f"s3://<LedgerBucket>/{table.name}/"


def test_partitions_are_projected_from_the_keys_the_writers_use(production: Stack) -> None:
    """dt=YYYY-MM-DD/hour=HH, as ledger.object_key and LedgerBucket.key write them: Athena
    reads only the prefixes of the days a query names, with no partition to add."""
    for table in TABLES:
        parameters = production.properties(TABLE_IDS[table.name])["TableInput"]["Parameters"]
        assert parameters["projection.enabled"] == "true"
        assert (parameters["projection.dt.type"], parameters["projection.dt.format"]) == (
            "date",
            "yyyy-MM-dd",
        )
        assert parameters["projection.dt.range"].endswith(",NOW+1DAYS")
        assert (
            parameters["projection.hour.type"],
            parameters["projection.hour.range"],
            parameters["projection.hour.digits"],
        ) == ("integer", "0,23", "2")
        # ${!dt} is Fn::Sub's escape for a literal ${dt}
        assert parameters["storage.location.template"] == (
            f"s3://<LedgerBucket>/{table.name}/dt=${{!dt}}/hour=${{!hour}}/"
        )
        # Athena reads an object's compression from its extension: the writers' .zst
        assert (parameters["compressionType"], SUFFIX) == ("zstd", ".jsonl.zst")


def test_the_database_is_named_as_glue_keeps_it_whatever_the_stacks_case() -> None:
    """Glue folds a database's name to lowercase, and IAM compares ARNs case-sensitively: a
    name made of `MeterRelayProd` would be granted under a name Glue does not have."""
    stack = Stack("MeterRelay-Prod")
    database = stack.properties("LedgerDatabase")["DatabaseInput"]["Name"]
    assert database == "meter_relay_51af3dc0_da77_11e4_872e_1234567db123"
    assert database == database.lower()  # no hyphen either: Athena's names have none
    # the policies name it by Ref (below): the name as given, which is the name Glue keeps


# ----- the workgroup -----------------------------------------------------------------------------
def test_the_workgroup_keeps_its_results_a_week_in_the_ledgers_bucket(production: Stack) -> None:
    workgroup = production.properties("LedgerWorkGroup")
    assert workgroup["Name"] == "production-eu-ledger"
    configuration = workgroup["WorkGroupConfiguration"]
    assert configuration["EnforceWorkGroupConfiguration"] is True
    results = configuration["ResultConfiguration"]
    assert results["OutputLocation"] == "s3://<LedgerBucket>/athena-results/"
    assert results["EncryptionConfiguration"] == {"EncryptionOption": "SSE_S3"}
    assert 10 * 1024**2 <= int(configuration["BytesScannedCutoffPerQuery"]) <= 1024**4  # Athena's
    # minimum is 10 MB
    rules = production.properties("LedgerBucket")["LifecycleConfiguration"]["Rules"]
    (expiry,) = [rule for rule in rules if rule.get("Prefix") == "athena-results/"]
    assert int(expiry["ExpirationInDays"]) <= 7
    outputs = production.template["Outputs"]
    assert outputs["LedgerWorkGroupName"]["Value"] == {"Ref": "LedgerWorkGroup"}
    assert outputs["LedgerDatabaseName"]["Value"] == {"Ref": "LedgerDatabase"}


# ----- who may do what ---------------------------------------------------------------------------
QUERY = {
    ("athena:StartQueryExecution", WORKGROUP_ARN),
    ("athena:GetQueryExecution", WORKGROUP_ARN),
    ("athena:GetQueryResults", WORKGROUP_ARN),
    ("athena:StopQueryExecution", WORKGROUP_ARN),
    ("glue:GetDatabase", f"{GLUE}:catalog"),
    ("glue:GetDatabase", f"{GLUE}:database/<LedgerDatabase>"),
    ("glue:GetDatabase", f"{GLUE}:table/<LedgerDatabase>/*"),
    ("glue:GetTable", f"{GLUE}:catalog"),
    ("glue:GetTable", f"{GLUE}:database/<LedgerDatabase>"),
    ("glue:GetTable", f"{GLUE}:table/<LedgerDatabase>/*"),
    ("s3:ListBucket", BUCKET_ARN),
    ("s3:GetBucketLocation", BUCKET_ARN),
    ("s3:PutObject", f"{BUCKET_ARN}/athena-results/*"),
    ("s3:GetObject", f"{BUCKET_ARN}/athena-results/*"),
    ("s3:AbortMultipartUpload", f"{BUCKET_ARN}/athena-results/*"),
    ("s3:ListMultipartUploadParts", f"{BUCKET_ARN}/athena-results/*"),
}


SYNC_REPLAYS = ("s3:PutObject", f"{BUCKET_ARN}/events/*/sync-replay-*")


def test_operators_may_query_the_ledger_and_record_only_cancellations_rejections_and_syncs(
    production: Stack,
) -> None:
    """No operator can write over the forwarder's objects: a sync replay's are its own."""
    policy = production.properties("LedgerOperatorPolicy")
    assert grants(policy["PolicyDocument"]) == QUERY | {
        ("s3:GetObject", f"{BUCKET_ARN}/events/*"),
        ("s3:GetObject", f"{BUCKET_ARN}/cancellations/*"),
        ("s3:GetObject", f"{BUCKET_ARN}/rejections/*"),
        ("s3:PutObject", f"{BUCKET_ARN}/cancellations/*"),
        ("s3:PutObject", f"{BUCKET_ARN}/rejections/*"),
        SYNC_REPLAYS,
    }
    output = production.template["Outputs"]["LedgerOperatorPolicyArn"]
    assert output["Value"] == {"Ref": "LedgerOperatorPolicy"}
    assert output["Condition"] == "HasLedger"


def test_replays_may_query_deliveries_and_rejections_and_write_only_their_sync_sends(
    production: Stack,
) -> None:
    policy = production.properties("DlqReplayLedgerPolicy")
    assert policy["RoleName"] == "<DlqReplayFunctionRole>"
    assert grants(policy["PolicyDocument"]) == QUERY | {
        ("s3:GetObject", f"{BUCKET_ARN}/events/*"),
        ("s3:GetObject", f"{BUCKET_ARN}/rejections/*"),
        SYNC_REPLAYS,
    }
    variables = production.properties("DlqReplayFunction")["Environment"]["Variables"]
    assert (
        variables["LEDGER_BUCKET"],
        variables["LEDGER_WORKGROUP"],
        variables["LEDGER_DATABASE"],
    ) == ("<LedgerBucket>", "<LedgerWorkGroup>", "<LedgerDatabase>")


def test_cancels_may_only_add_cancellations(production: Stack) -> None:
    policy = production.properties("DlqCancelLedgerPolicy")
    assert policy["RoleName"] == "<DlqCancelFunctionRole>"
    assert grants(policy["PolicyDocument"]) == {("s3:PutObject", f"{BUCKET_ARN}/cancellations/*")}
    variables = production.properties("DlqCancelFunction")["Environment"]["Variables"]
    assert variables["LEDGER_BUCKET"] == "<LedgerBucket>"


def test_error_reports_read_deliveries_and_add_rejections_only(production: Stack) -> None:
    policy = production.properties("ErrorReportsLedgerPolicy")
    assert policy["RoleName"] == "<ErrorReportsFunctionRole>"
    document = policy["PolicyDocument"]
    assert grants(document) == {
        ("s3:ListBucket", BUCKET_ARN),
        ("s3:GetObject", f"{BUCKET_ARN}/events/*"),
        ("s3:PutObject", f"{BUCKET_ARN}/rejections/*"),
    }
    (listing,) = [s for s in document["Statement"] if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "events/*"}}


def test_the_functions_roles_exist_under_the_names_the_policies_give() -> None:
    """The DLQ and error-report functions' roles are SAM's (<Function>Role): the ledger's
    policies attach to them by that name."""
    stack = Stack("production", StripeMode="live", StripeWebhookEndpoint="true")
    roles = {k for k, r in stack.resources.items() if r["Type"] == "AWS::IAM::Role"}
    for policy in ("DlqReplayLedgerPolicy", "DlqCancelLedgerPolicy", "ErrorReportsLedgerPolicy"):
        assert stack.properties(policy)["RoleName"].strip("<>") in roles


def test_without_error_reports_there_is_no_policy_for_their_function() -> None:
    stack = Stack("production", StripeMode="live")
    assert "ErrorReportsLedgerPolicy" not in stack.resources
    assert "DlqReplayLedgerPolicy" in stack.resources


def test_without_the_ledger_nothing_queries_it_and_the_tools_are_told_so() -> None:
    stack = Stack("production", StripeMode="live", DeliveryLedger="disabled")
    kinds = {r["Type"] for r in stack.resources.values()}
    assert not kinds & {"AWS::Glue::Database", "AWS::Glue::Table", "AWS::Athena::WorkGroup"}
    assert "LedgerOperatorPolicy" not in stack.resources
    for function in ("DlqReplayFunction", "DlqCancelFunction"):
        variables = stack.properties(function)["Environment"]["Variables"]
        ledger = {k: v for k, v in variables.items() if k.startswith("LEDGER_")}
        assert ledger, function
        assert set(ledger.values()) == {""}, function
