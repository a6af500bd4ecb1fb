"""`sam local invoke` without a container: run one function of template.yaml in this process.

    python -m devkit.invoke ForwarderFunction -e events/forwarder/batch.json \\
        [--env-vars events/env.json] [--template template.yaml] \\
        [--parameter-overrides StripeApiVersion=2026-09-30.preview ...] [--timeout 5]

The JSON result goes to stdout; the handler's own output (print, Powertools logs) and a REPORT
line go to stderr, so stdout stays parseable. A failed invocation exits 1 with Lambda's error
document as the last line of stderr; a template or argument problem exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from typing import Any

from devkit.harness import HarnessError, load_function, load_template


def _parse_overrides(tokens: list[str]) -> dict[str, str]:
    """Both SAM spellings: `Key=Value` and `ParameterKey=Key,ParameterValue=Value`."""
    overrides: dict[str, str] = {}
    for token in tokens:
        for item in shlex.split(token):
            if item.startswith("ParameterKey="):
                key_part, sep, value_part = item.partition(",ParameterValue=")
                if not sep:
                    raise HarnessError(f"bad parameter override {item!r}")
                overrides[key_part.removeprefix("ParameterKey=")] = value_part
                continue
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise HarnessError(f"bad parameter override {item!r}: expected Key=Value")
            overrides[key] = value
    return overrides


def _read_event(source: str | None) -> Any:
    if source is None:
        return {}
    if source == "-":
        try:
            return json.loads(sys.stdin.read() or "{}")
        except ValueError as exc:
            raise HarnessError(f"event on stdin is not JSON: {exc}") from exc
    return source  # a path: the harness reads it


def _only_function(template_path: str) -> str:
    """Like SAM, the logical id may be omitted when the template has one function."""
    resources = load_template(template_path)["Resources"]
    functions = [
        name
        for name, resource in resources.items()
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Function"
    ]
    if len(functions) != 1:
        raise HarnessError(f"name the function to invoke, one of {sorted(functions)}")
    return str(functions[0])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.invoke",
        description="Invoke a function of a SAM template in-process, as sam local invoke does.",
    )
    parser.add_argument("function", nargs="?", help="the function's logical id")
    parser.add_argument("-e", "--event", help="JSON event file, or - for stdin (default {})")
    parser.add_argument("-n", "--env-vars", help="JSON file of environment overrides")
    parser.add_argument("-t", "--template", default="template.yaml", help="the SAM template")
    parser.add_argument(
        "--parameter-overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter values",
    )
    parser.add_argument("--timeout", type=float, help="override the function's Timeout (s)")
    parser.add_argument("--region", help="AWS region (default: AWS_DEFAULT_REGION or us-east-1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        function = args.function or _only_function(args.template)
        event = _read_event(args.event)
        lambda_function = load_function(
            args.template,
            function,
            env_vars=args.env_vars,
            parameter_overrides=_parse_overrides(args.parameter_overrides),
            region=args.region,
            timeout=args.timeout,
        )
        # the handler's stdout is its log stream: keep it off the result channel
        with lambda_function, contextlib.redirect_stdout(sys.stderr):
            invocation = lambda_function.invoke(event)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = f"REPORT RequestId: {invocation.request_id}\tDuration: {invocation.duration_ms:.2f} ms"
    if invocation.init_duration_ms is not None:
        report += f"\tInit Duration: {invocation.init_duration_ms:.2f} ms"
    print(report, file=sys.stderr)
    if invocation.error is not None:
        print(json.dumps(invocation.error), file=sys.stderr)
        return 1
    print(json.dumps(invocation.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
