"""`meter-relay --stack-name` reads what template.yaml's Outputs declare, each the value of the
setting the tools would read from the environment (the functions' own variables)."""

from __future__ import annotations

from pathlib import Path

from devkit.harness import load_template
from meter_relay.stack import OUTPUT_VARIABLES, REQUIRED_OUTPUTS

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def test_every_output_the_cli_reads_is_declared_with_what_the_functions_get() -> None:
    template = load_template(TEMPLATE)
    outputs = template["Outputs"]
    assert set(REQUIRED_OUTPUTS) <= set(OUTPUT_VARIABLES) <= set(outputs)
    resources = template["Resources"]
    replay = resources["DlqReplayFunction"]["Properties"]["Environment"]["Variables"]
    reports = resources["ErrorReportsFunction"]["Properties"]["Environment"]["Variables"]
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    for output, variable in OUTPUT_VARIABLES.items():
        assert outputs[output].get("Description"), output
        value = outputs[output]["Value"]
        if "Condition" in outputs[output]:  # the functions get it, or nothing, by the condition
            value = {"Fn::If": [outputs[output]["Condition"], value, ""]}
        assert value == {**shared, **reports, **replay}[variable], output
