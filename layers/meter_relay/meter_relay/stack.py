"""A deployed stack's settings for the operator tools, from its CloudFormation outputs.

`meter-relay --stack-name S` finds every queue, secret and function of the stack this way, so
an operator needs nothing but the stack's name (and AWS credentials): the outputs are named in
template.yaml, and each maps to the variable the tools would otherwise read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from meter_relay.config import ConfigError

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient

# output -> the ToolsConfig variable it sets
OUTPUT_VARIABLES = {
    "DeadLetterQueueUrl": "DEAD_LETTER_QUEUE_URL",
    "UsageQueueUrl": "USAGE_QUEUE_URL",
    "StripeSecretArn": "STRIPE_SECRET_ID",
    "StripeApiBase": "STRIPE_API_BASE",
    "StripeApiVersion": "STRIPE_API_VERSION",
    "StripeMode": "STRIPE_MODE",
    "MeterKeys": "METER_KEYS",
    "ValueRule": "VALUE_RULE",
    "LedgerBucketName": "LEDGER_BUCKET",
    "LedgerWorkGroupName": "LEDGER_WORKGROUP",
    "LedgerDatabaseName": "LEDGER_DATABASE",
    "ErrorReportsTableName": "ERROR_REPORTS_TABLE",
    "MeterCatalogPath": "METER_CATALOG_PATH",
}
REQUIRED_OUTPUTS = ("DeadLetterQueueUrl", "UsageQueueUrl", "StripeSecretArn", "StripeMode")


@dataclass(frozen=True)
class Stack:
    name: str
    outputs: dict[str, str]

    @property
    def settings(self) -> dict[str, str]:
        """The tools' variables the stack sets."""
        return {
            variable: self.outputs[output]
            for output, variable in OUTPUT_VARIABLES.items()
            if output in self.outputs
        }


def describe_stack(cloudformation: CloudFormationClient, name: str) -> Stack:
    """The stack's outputs; a ConfigError naming what to fix when it is not there or is not a
    Meter Relay stack."""
    try:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationError":
            region = cloudformation.meta.region_name
            raise ConfigError(
                f"no stack named {name!r} in {region} (check --stack-name, --region, --profile)"
            ) from None
        raise
    outputs = {
        output["OutputKey"]: output.get("OutputValue", "")
        for output in stacks[0].get("Outputs", [])
        if "OutputKey" in output
    }
    missing = [output for output in REQUIRED_OUTPUTS if output not in outputs]
    if missing:
        raise ConfigError(
            f"the stack {name!r} has no output {', '.join(missing)}: not a Meter Relay stack, "
            "or deployed from an older template (sam deploy it again)"
        )
    return Stack(name, outputs)
