"""`make checkov`: checkov on template.yaml, and on the template as CloudFormation deploys it.

checkov has no SAM framework: it reads template.yaml as CloudFormation, checks the
AWS::Serverless::Function resources themselves, but never sees the IAM roles that SAM makes
from each function's `Policies`, nor the event source mapping and the schedule. So the gate
scans twice: template.yaml as written, then the same template after the SAM transform
(samtranslator, offline, no credentials), where those are plain resources. Inline skips
(`Metadata: checkov: skip:`) travel with the functions through the transform.

checkov itself lives in its own venv (.venv-checkov: it pins a boto3 that the dev venv cannot
have), so this module runs it as a subprocess, with `--skip-download` and no update check: no
network. It fails (exit 1) on any failed check, any parsing error (checkov exits 0 on those),
a scan that checked nothing, or a skip whose comment does not say why.

    python -m devkit.checkov_gate [--checkov .venv-checkov/bin/checkov] [--template template.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DEFAULT_TEMPLATE = ROOT / "template.yaml"
MIN_COMMENT_LENGTH = 20  # "a justification", not "ok" or "n/a"
NO_COMMENT = "No comment provided"  # what checkov reports for a skip without one


@dataclass
class ScanResult:
    """One checkov scan, reduced to what the gate decides on."""

    name: str
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unjustified: list[str] = field(default_factory=list)
    parsing_errors: list[str] = field(default_factory=list)
    version: str = ""

    @property
    def problems(self) -> list[str]:
        found = [f"failed: {line}" for line in self.failed]
        found += [f"skip without a justification: {line}" for line in self.unjustified]
        found += [f"could not parse: {path}" for path in self.parsing_errors]
        if not self.passed and not self.failed and not self.skipped:
            found.append("checkov checked nothing")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        tool = f"checkov {self.version}".strip()
        return (
            f"{tool} {self.name}: passed {self.passed}, "
            f"failed {len(self.failed)}, skipped {len(self.skipped)}, "
            f"parsing errors {len(self.parsing_errors)}"
        )


def _describe(check: dict[str, Any]) -> str:
    lines = check.get("file_line_range") or []
    where = f"{check.get('file_path', '?')}:{'-'.join(str(n) for n in lines)}"
    return f"{check.get('check_id')} {check.get('resource')} ({where}): {check.get('check_name')}"


def evaluate(name: str, report: Any) -> ScanResult:
    """Read checkov's `-o json` output (one framework: a dict; several: a list of dicts)."""
    result = ScanResult(name)
    reports = report if isinstance(report, list) else [report]
    for part in reports:
        if not isinstance(part, dict):
            continue
        summary = part.get("summary") or {}
        result.version = str(summary.get("checkov_version", result.version))
        results = part.get("results") or {}
        result.passed += len(results.get("passed_checks") or [])
        result.failed += [_describe(c) for c in results.get("failed_checks") or []]
        for check in results.get("skipped_checks") or []:
            result.skipped.append(_describe(check))
            comment = str((check.get("check_result") or {}).get("suppress_comment") or "")
            if comment.strip() in ("", NO_COMMENT) or len(comment.strip()) < MIN_COMMENT_LENGTH:
                result.unjustified.append(_describe(check))
        result.parsing_errors += [str(p) for p in results.get("parsing_errors") or []]
        # a file checkov could not parse only shows in the summary's count
        missing = int(summary.get("parsing_errors") or 0) - len(results.get("parsing_errors") or [])
        result.parsing_errors += ["(unnamed file)"] * max(missing, 0)
    return result


def run_checkov(checkov: Path, path: Path, name: str) -> ScanResult:
    command = [str(checkov), "-f", str(path), "--framework", "cloudformation"]
    # not --quiet: its JSON would then hold the failed checks only, no passes and no skips
    command += ["--skip-download", "--compact", "-o", "json"]
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    completed = subprocess.run(  # noqa: S603 (our pinned checkov, our own template)
        command, capture_output=True, text=True, env=env, check=False, timeout=600
    )
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        result = ScanResult(name)
        tail = (completed.stderr or completed.stdout)[-2000:]
        result.parsing_errors.append(f"checkov gave no JSON (exit {completed.returncode}): {tail}")
        return result
    return evaluate(name, report)


def sam_transform(template: Path, region: str = "us-east-1") -> dict[str, Any]:
    """The template as CloudFormation deploys it, from samtranslator (as cfn-lint does it).

    Code locations become a placeholder S3 URI (the transform wants one; nothing is uploaded),
    and no managed policy name needs resolving (the template's policies are inline documents,
    and SAM adds its own by ARN), so no AWS call is made. The region only fills pseudo
    parameters.
    """
    import boto3
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import Translator  # type: ignore[import-untyped]
    from samtranslator.yaml_helper import yaml_parse  # type: ignore[import-untyped]

    document = yaml_parse(template.read_text(encoding="utf-8"))
    for resource in (document.get("Resources") or {}).values():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):
            if isinstance(properties.get(key), str):
                properties[key] = "s3://checkov-placeholder/code.zip"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    transformed: dict[str, Any] = translator.translate(
        document, parameter_values={}, get_managed_policy_map=dict
    )
    return transformed


def _show(result: ScanResult) -> None:
    print(result.summary(), flush=True)
    for problem in result.problems:
        print(f"  {problem}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.checkov_gate", description=__doc__)
    parser.add_argument("--checkov", type=Path, default=DEFAULT_CHECKOV)
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    args = parser.parse_args(argv)
    if not args.checkov.exists():
        print(f"{args.checkov} not found: run `make checkov` (it builds .venv-checkov)")
        return 2
    results = [run_checkov(args.checkov, args.template, args.template.name)]
    _show(results[-1])
    with tempfile.TemporaryDirectory(prefix="checkov-") as directory:
        name = "after the SAM transform"
        try:
            transformed = sam_transform(args.template)
        except Exception as error:  # any reason is a failed gate, shown as such
            results.append(ScanResult(name, parsing_errors=[f"the SAM transform failed: {error}"]))
        else:
            deployed = Path(directory) / "template.transformed.json"
            deployed.write_text(json.dumps(transformed, indent=1), encoding="utf-8")
            results.append(run_checkov(args.checkov, deployed, name))
    _show(results[-1])
    if all(result.ok for result in results):
        print("checkov: OK (each skip is justified in template.yaml; see docs/security.md)")
        return 0
    print("checkov: FAILED")
    return 1


if __name__ == "__main__":
    sys.exit(main())
