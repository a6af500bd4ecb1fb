"""devkit.checkov_gate: what makes `make checkov` fail, without running checkov itself."""

from __future__ import annotations

from typing import Any

from devkit.checkov_gate import DEFAULT_TEMPLATE, MIN_COMMENT_LENGTH, evaluate, sam_transform

JUSTIFIED = "SQS-triggered: the queue's RedrivePolicy is the dead-letter path."


def check(check_id: str, comment: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "check_id": check_id,
        "check_name": "a check",
        "resource": "AWS::Serverless::Function.ForwarderFunction",
        "file_path": "/template.yaml",
        "file_line_range": [10, 20],
    }
    if comment is not None:
        found["check_result"] = {"result": "SKIPPED", "suppress_comment": comment}
    return found


def report(
    passed: int = 1,
    failed: int = 0,
    skipped: list[str] | None = None,
    parsing_errors: int = 0,
) -> dict[str, Any]:
    return {
        "check_type": "cloudformation",
        "results": {
            "passed_checks": [check(f"CKV_AWS_{n}") for n in range(passed)],
            "failed_checks": [check(f"CKV_AWS_{100 + n}") for n in range(failed)],
            "skipped_checks": [check("CKV_AWS_116", c) for c in skipped or []],
            "parsing_errors": [f"/broken-{n}.yaml" for n in range(parsing_errors)],
        },
        "summary": {
            "passed": passed,
            "failed": failed,
            "skipped": len(skipped or []),
            "parsing_errors": parsing_errors,
            "checkov_version": "3.3.30",
        },
    }


def test_all_passed_or_justly_skipped_is_ok() -> None:
    result = evaluate("template.yaml", report(passed=13, skipped=[JUSTIFIED]))
    assert result.ok
    assert result.summary() == (
        "checkov 3.3.30 template.yaml: passed 13, failed 0, skipped 1, parsing errors 0"
    )


def test_a_failed_check_fails() -> None:
    result = evaluate("template.yaml", report(failed=1))
    assert not result.ok
    assert result.problems == [
        "failed: CKV_AWS_100 AWS::Serverless::Function.ForwarderFunction "
        "(/template.yaml:10-20): a check"
    ]


def test_a_skip_without_a_reason_fails() -> None:
    for comment in ("No comment provided", "", "ok", "x" * (MIN_COMMENT_LENGTH - 1)):
        result = evaluate("template.yaml", report(skipped=[comment]))
        assert [p.split(":")[0] for p in result.problems] == ["skip without a justification"]


def test_a_parsing_error_fails_even_when_checkov_exits_zero() -> None:
    assert not evaluate("template.yaml", report(parsing_errors=1)).ok
    # a file checkov could not read at all is only counted in the summary
    unread = report(passed=0)
    unread["results"] = {"failed_checks": []}
    unread["summary"]["parsing_errors"] = 1
    result = evaluate("template.yaml", unread)
    assert "could not parse: (unnamed file)" in result.problems
    assert "checkov checked nothing" in result.problems


def test_several_frameworks_are_added_up() -> None:
    result = evaluate("x", [report(passed=2), report(passed=3, failed=1)])
    assert (result.passed, len(result.failed)) == (5, 1)


def test_the_sam_transform_exposes_the_roles_and_keeps_the_skips() -> None:
    transformed = sam_transform(DEFAULT_TEMPLATE)
    resources = transformed["Resources"]
    roles = {name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"}
    assert {"ForwarderRole", "RefresherFunctionRole"} <= roles  # ours, and one SAM makes
    forwarder = resources["ForwarderFunction"]
    assert forwarder["Type"] == "AWS::Lambda::Function"
    skips = {skip["id"] for skip in forwarder["Metadata"]["checkov"]["skip"]}
    assert "CKV_AWS_116" in skips
    assert "AWS::Serverless::Function" not in {r["Type"] for r in resources.values()}
