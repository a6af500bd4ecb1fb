"""The invocation harness against a toy template: environment, isolation, warm starts, errors."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import invoke
from devkit.harness import (
    HarnessError,
    InitError,
    InvocationError,
    LambdaFunction,
    load_function,
    load_template,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "harness"
TEMPLATE = FIXTURES / "template.yaml"
ALPHA_DIR = FIXTURES / "functions" / "alpha"
BETA_DIR = FIXTURES / "functions" / "beta"
LAYER_DIR = FIXTURES / "layers" / "toy"


@pytest.fixture
def alpha() -> Iterator[LambdaFunction]:
    with load_function(TEMPLATE, "AlphaFunction", region="eu-west-1") as function:
        yield function


def count(function: LambdaFunction) -> dict[str, int]:
    result: dict[str, int] = function.invoke({"action": "count"}).raise_for_error()
    return result


# --- template and environment ----------------------------------------------------------------


def test_template_short_tags_become_long_form_and_dates_stay_strings() -> None:
    template = load_template(TEMPLATE)

    variables = template["Resources"]["AlphaFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["QUEUE_URL"] == {"Ref": "JobsQueue"}
    assert variables["QUEUE_ARN"] == {"Fn::GetAtt": ["JobsQueue", "Arn"]}
    assert variables["MODE"] == {"Fn::If": ["IsProd", "production", "development"]}
    assert template["Conditions"]["IsProd"] == {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}
    assert template["Parameters"]["ApiVersion"]["Default"] == "2026-01-01"


def test_environment_resolves_globals_parameters_pseudos_and_sub() -> None:
    function = load_function(TEMPLATE, "AlphaFunction", region="eu-west-1")
    env = function.environment

    assert env["SHARED"] == "from-globals"
    assert env["GREETING"] == "hello-from-alpha"  # the function's value wins over Globals
    assert env["API_VERSION"] == "2026-01-01"
    assert env["STAGE_LABEL"] == "local-dev-eu-west-1"
    assert env["ESCAPED"] == "${Literal}-dev"
    assert env["ACCOUNT"] == "123456789012"
    assert env["COUNT"] == "42"
    assert env["ENABLED"] == "true"
    # a resource's Ref, GetAtt and a parameter without a default cannot be resolved
    for unresolvable in ("QUEUE_URL", "QUEUE_ARN", "NEEDS_VALUE"):
        assert unresolvable not in env


def test_fn_if_resolves_over_conditions_of_parameters_and_pseudos() -> None:
    """As SAM CLI's intrinsic resolver: Fn::If with Fn::Equals, Fn::Not, Fn::And, Fn::Or and
    Condition; a branch that needs a deployed stack stays unresolved only when it is taken."""
    europe = load_function(TEMPLATE, "AlphaFunction", region="eu-west-1").environment
    elsewhere = load_function(TEMPLATE, "AlphaFunction", region="us-east-1").environment
    prod = load_function(
        TEMPLATE, "AlphaFunction", parameter_overrides={"Stage": "prod"}, region="us-east-1"
    ).environment
    blank = load_function(
        TEMPLATE, "AlphaFunction", parameter_overrides={"Stage": ""}, region="eu-west-1"
    ).environment

    assert (europe["MODE"], europe["REACH"], europe["PROD_QUEUE"]) == (
        "development",
        "local-wide",
        "none",
    )
    assert (elsewhere["MODE"], elsewhere["REACH"]) == ("development", "narrow")
    assert (prod["MODE"], prod["REACH"]) == ("production", "local-wide")
    assert "PROD_QUEUE" not in prod  # the branch taken is a resource's Ref
    assert blank["REACH"] == "narrow"


def test_the_stack_name_can_be_given_as_for_a_deployed_stack() -> None:
    staging = load_function(TEMPLATE, "AlphaFunction", region="eu-west-1", stack_name="staging")

    assert staging.environment["STAGE_LABEL"] == "staging-dev-eu-west-1"
    assert staging.environment["REACH"] == "staging-wide"


def test_lambda_variables_and_function_properties_merge_globals() -> None:
    alpha = load_function(TEMPLATE, "AlphaFunction", region="eu-west-1").environment
    beta = load_function(TEMPLATE, "BetaFunction", region="eu-west-1").environment

    assert alpha["AWS_LAMBDA_FUNCTION_NAME"] == "AlphaFunction"
    assert alpha["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert alpha["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "5"
    assert alpha["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert alpha["AWS_REGION"] == alpha["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert alpha["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.13"
    assert alpha["LAMBDA_TASK_ROOT"] == str(ALPHA_DIR)
    assert alpha["_HANDLER"] == "app.lambda_handler"
    assert alpha["AWS_SAM_LOCAL"] == "true"
    assert alpha["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/AlphaFunction"
    assert beta["AWS_LAMBDA_FUNCTION_TIMEOUT"] == "7"
    assert beta["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1024"
    assert beta["GREETING"] == "hello-from-globals"
    assert beta["ONLY_BETA"] == "beta"
    assert "STAGE_LABEL" not in beta


def test_region_comes_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert load_function(TEMPLATE, "BetaFunction").environment["AWS_REGION"] == "us-east-1"

    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    function = load_function(TEMPLATE, "AlphaFunction")
    assert function.environment["STAGE_LABEL"] == "local-dev-ap-south-1"
    assert function.spec.function_arn.startswith("arn:aws:lambda:ap-south-1:123456789012:")


def test_parameter_overrides_replace_defaults_and_fill_missing_values() -> None:
    env = load_function(
        TEMPLATE,
        "AlphaFunction",
        parameter_overrides={"Stage": "prod", "Undefaulted": "given"},
        region="eu-west-1",
    ).environment

    assert env["STAGE_LABEL"] == "local-prod-eu-west-1"
    assert env["ESCAPED"] == "${Literal}-prod"
    assert env["NEEDS_VALUE"] == "given"
    with pytest.raises(HarnessError, match="Stgae"):
        load_function(TEMPLATE, "AlphaFunction", parameter_overrides={"Stgae": "prod"})


def test_env_vars_function_section_wins_and_only_declared_variables_change() -> None:
    env_vars = {
        "Parameters": {"GREETING": "p", "SHARED": "p", "QUEUE_URL": "http://q", "NEW": "x"},
        "AlphaFunction": {"GREETING": "f", "COUNT": 7, "ENABLED": False},
        "BetaFunction": {"SHARED": "for-beta-only"},
    }

    env = load_function(TEMPLATE, "AlphaFunction", env_vars=env_vars).environment

    assert env["GREETING"] == "f"
    assert env["SHARED"] == "p"
    assert env["QUEUE_URL"] == "http://q"  # unresolvable in the template, but overridden
    assert env["COUNT"] == "7"
    assert env["ENABLED"] == "false"
    assert "NEW" not in env  # like SAM: the template must declare a variable to override it


def test_extra_env_applies_regardless_and_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"AlphaFunction": {"GREETING": "from-file"}}))

    env = load_function(
        TEMPLATE,
        "AlphaFunction",
        env_vars=env_file,
        extra_env={"GREETING": "extra", "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "QUEUE_URL": "q"},
    ).environment

    assert env["GREETING"] == "extra"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
    assert env["QUEUE_URL"] == "q"


def test_unknown_or_non_function_logical_ids_are_rejected() -> None:
    with pytest.raises(HarnessError, match="AlphaFunction"):
        load_function(TEMPLATE, "NoSuchFunction")
    with pytest.raises(HarnessError, match="not an AWS::Serverless::Function"):
        load_function(TEMPLATE, "JobsQueue")


# --- invocation: environment, warm starts, isolation -----------------------------------------


def test_invoke_sets_the_environment_and_restores_os_environ(
    alpha: LambdaFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEUE_URL", "from-the-shell")  # declared but unresolvable: hidden
    monkeypatch.setenv("OUTER_ONLY", "kept")
    monkeypatch.setenv("GREETING", "outer")
    before = dict(os.environ)

    result = alpha.invoke(
        {
            "action": "env",
            "keys": ["GREETING", "QUEUE_URL", "OUTER_ONLY", "AWS_SAM_LOCAL", "LEAK"],
            "set": {"LEAK": "from-the-handler", "GREETING": "changed-by-handler"},
        }
    ).raise_for_error()

    assert result["env"] == {
        "GREETING": "changed-by-handler",
        "QUEUE_URL": None,
        "OUTER_ONLY": "kept",
        "AWS_SAM_LOCAL": "true",
        "LEAK": "from-the-handler",
    }
    assert result["init_greeting"] == "hello-from-alpha"  # the environment is set during init
    assert dict(os.environ) == before


def test_handler_changes_to_os_environ_stay_in_its_environment(alpha: LambdaFunction) -> None:
    before = dict(os.environ)
    keys = ["LEAK", "GREETING"]
    alpha.invoke({"action": "env", "keys": [], "set": {"LEAK": "x", "GREETING": "changed"}})

    warm = alpha.invoke({"action": "env", "keys": keys}).raise_for_error()
    with load_function(TEMPLATE, "AlphaFunction") as other:
        fresh = other.invoke({"action": "env", "keys": keys}).raise_for_error()

    assert warm["env"] == {"LEAK": "x", "GREETING": "changed"}  # same process in Lambda
    assert fresh["env"] == {"LEAK": None, "GREETING": "hello-from-alpha"}
    assert dict(os.environ) == before


def test_warm_invokes_keep_module_state_and_a_new_environment_starts_cold(
    alpha: LambdaFunction,
) -> None:
    first = alpha.invoke({"action": "count"})
    second = alpha.invoke({"action": "count"})

    assert (first.cold_start, second.cold_start) == (True, False)
    assert first.init_duration_ms is not None
    assert first.init_duration_ms > 0
    assert second.init_duration_ms is None
    assert (first.result["app"], second.result["app"]) == (1, 2)
    assert (first.result["layer"], second.result["layer"]) == (1, 2)
    # the same thread runs every invoke of an environment, as in Lambda
    assert second.result["thread_local"] == 2
    assert first.result["thread"] == second.result["thread"] != threading.get_ident()

    with load_function(TEMPLATE, "AlphaFunction") as other:
        fresh = other.invoke({"action": "count"})
    assert fresh.cold_start is True
    assert (fresh.result["app"], fresh.result["layer"], fresh.result["thread_local"]) == (1, 1, 1)
    assert count(alpha)["app"] == 3  # the first environment is unaffected


def test_functions_with_the_same_module_name_do_not_share_modules(alpha: LambdaFunction) -> None:
    with load_function(TEMPLATE, "BetaFunction") as beta:
        alpha_modules = alpha.invoke({"action": "modules"}).raise_for_error()
        beta_result = beta.invoke({}).raise_for_error()
        alpha_count = count(alpha)
        beta_again = beta.invoke({}).raise_for_error()
        alpha_modules_again = alpha.invoke({"action": "modules"}).raise_for_error()

    assert alpha_modules["app_file"] == alpha_modules_again["app_file"] == str(ALPHA_DIR / "app.py")
    assert beta_result["app_file"] == str(BETA_DIR / "app.py")
    assert alpha_modules["layer_dir"] == str(LAYER_DIR / "toy_layer")
    assert alpha_modules["sys_path_head"] == [str(ALPHA_DIR), str(LAYER_DIR)]
    # each environment has its own copy of the layer's module state
    assert (beta_result["layer"], alpha_count["layer"], beta_again["layer"]) == (1, 1, 2)


def test_sys_modules_and_sys_path_are_restored(
    alpha: LambdaFunction, monkeypatch: pytest.MonkeyPatch
) -> None:
    outsider = types.ModuleType("app")
    monkeypatch.setitem(sys.modules, "app", outsider)
    path_before = list(sys.path)
    modules_before = set(sys.modules)

    result = alpha.invoke({"action": "modules"}).raise_for_error()  # imports toy_layer.paths
    count(alpha)

    assert result["app_file"] == str(ALPHA_DIR / "app.py")  # not the outsider
    assert sys.modules["app"] is outsider
    assert "toy_layer" not in sys.modules
    assert "toy_layer.paths" not in sys.modules
    assert sys.path == path_before
    assert not {name for name in set(sys.modules) - modules_before if name.startswith("toy")}


# --- invocation: context, deadline, errors ---------------------------------------------------


def test_context_has_lambdas_attributes_and_a_real_deadline(alpha: LambdaFunction) -> None:
    invocation = alpha.invoke({"action": "context"})
    context = invocation.raise_for_error()

    assert context["function_name"] == "AlphaFunction"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == (
        "arn:aws:lambda:eu-west-1:123456789012:function:AlphaFunction"
    )
    assert context["memory_limit_in_mb"] == 256
    assert context["aws_request_id"] == invocation.request_id
    assert context["log_group_name"] == "/aws/lambda/AlphaFunction"
    assert "[$LATEST]" in context["log_stream_name"]
    assert context["identity"] is None
    assert context["client_context"] is None
    first, later = context["remaining"]
    assert 0 < later < first <= 5000
    assert first - later >= 40  # the handler slept 50 ms between the two readings


def test_timeout_gives_sandbox_timedout_and_the_next_invoke_is_cold() -> None:
    with load_function(TEMPLATE, "AlphaFunction", timeout=1) as function:
        assert count(function)["app"] == 1
        started = time.monotonic()

        timed_out = function.invoke({"action": "sleep", "seconds": 30})

        # cut at the deadline, not after the handler's 30 s (margins wide for a loaded machine)
        assert time.monotonic() - started < 15
        assert timed_out.error is not None
        assert timed_out.error["errorType"] == "Sandbox.Timedout"
        assert "Task timed out after 1.00 seconds" in timed_out.error["errorMessage"]
        assert timed_out.result is None
        assert 1000 <= timed_out.duration_ms < 15_000
        assert not function.loaded
        after = function.invoke({"action": "count"})
        assert after.cold_start is True
        assert after.result["app"] == 1  # a fresh environment


def test_per_invoke_timeout_override(alpha: LambdaFunction) -> None:
    invocation = alpha.invoke({"action": "sleep", "seconds": 0.5}, timeout=0.1)

    assert invocation.error is not None
    assert invocation.error["errorType"] == "Sandbox.Timedout"
    assert alpha.invoke({"action": "sleep", "seconds": 0}).result == "woke up"


def test_exception_becomes_an_error_result_and_the_environment_stays_warm(
    alpha: LambdaFunction,
) -> None:
    count(alpha)

    failed = alpha.invoke({"action": "raise", "message": "bad record"})

    assert not failed.ok
    assert failed.error is not None
    assert failed.error["errorType"] == "ValueError"
    assert failed.error["errorMessage"] == "bad record"
    assert failed.error["requestId"] == failed.request_id
    trace = "".join(failed.error["stackTrace"])
    assert "alpha/app.py" in trace
    assert "harness.py" not in trace
    with pytest.raises(InvocationError, match="ValueError: bad record"):
        failed.raise_for_error()
    after = alpha.invoke({"action": "count"})
    assert after.cold_start is False
    assert after.result["app"] == 2


def test_results_are_marshalled_as_json(alpha: LambdaFunction) -> None:
    broken = alpha.invoke({"action": "unserialisable"})
    decimal_result = alpha.invoke({"action": "decimal"})

    assert broken.result is None
    assert broken.error is not None
    assert broken.error["errorType"] == "Runtime.MarshalError"
    assert decimal_result.result == {"amount": 1.5}


def test_sys_exit_resets_the_environment(alpha: LambdaFunction) -> None:
    count(alpha)

    exited = alpha.invoke({"action": "exit"})

    assert exited.error is not None
    assert exited.error["errorType"] == "Runtime.ExitError"
    assert alpha.invoke({"action": "count"}).cold_start is True


def test_missing_handler_is_an_init_error() -> None:
    with load_function(TEMPLATE, "MissingHandlerFunction") as function:
        invocation = function.invoke({})
        assert invocation.error is not None
        assert invocation.error["errorType"] == "Runtime.HandlerNotFound"
        assert invocation.cold_start is True
        with pytest.raises(InitError, match="no_such_handler"):
            function.load()
        assert not function.loaded


def test_event_from_a_file_is_a_fresh_copy(alpha: LambdaFunction) -> None:
    event_file = FIXTURES / "events" / "echo.json"
    expected = json.loads(event_file.read_text())

    assert alpha.invoke(event_file).result == expected
    assert alpha.invoke(str(event_file)).result == expected
    assert alpha.invoke().result == {}  # no event: {}
    with pytest.raises(HarnessError):
        alpha.invoke({"action": "echo", "bad": {1, 2}})


def test_event_bytes_are_the_payload_as_the_runtime_api_hands_it_over(
    alpha: LambdaFunction,
) -> None:
    event_file = FIXTURES / "events" / "echo.json"
    payload = event_file.read_bytes()
    assert alpha.invoke(payload).result == json.loads(payload)
    with pytest.raises(HarnessError, match="not JSON"):
        alpha.invoke(b"{not json")


def test_the_event_is_freed_when_its_invocation_ends(alpha: LambdaFunction, tmp_path: Path) -> None:
    """Lambda's runtime frees an event once its invoke is answered. The harness kept it until
    the next invoke began, whose time then counted freeing it: in the bench, 5-7 ms of a
    10,000-record batch charged to whichever path came next."""
    freed = tmp_path / "freed"
    assert alpha.invoke({"action": "hold", "path": str(freed)}).result == "held"
    assert freed.read_text() == "freed"


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_invokes_with_an_event_and_env_vars_file(capsys: pytest.CaptureFixture[str]) -> None:
    code = invoke.main(
        [
            "AlphaFunction",
            "-e",
            str(FIXTURES / "events" / "env-check.json"),
            "--env-vars",
            str(FIXTURES / "events" / "env.json"),
            "--template",
            str(TEMPLATE),
        ]
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["env"] == {
        "GREETING": "alpha-from-env-file",
        "SHARED": "from-env-file",
        "QUEUE_URL": "https://sqs.local/queue",
        "NOT_DECLARED": None,
    }
    assert "alpha handling env" in err  # the handler's prints go to stderr, not the result
    assert "REPORT RequestId:" in err
    assert "Init Duration:" in err


def test_cli_reports_failures_and_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"action": "raise", "message": "nope"}'))

    code = invoke.main(["AlphaFunction", "-e", "-", "-t", str(TEMPLATE)])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    error = json.loads(err.strip().splitlines()[-1])
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "nope")


def test_cli_parameter_overrides_and_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = {"action": "env", "keys": ["STAGE_LABEL", "NEEDS_VALUE", "AWS_LAMBDA_FUNCTION_TIMEOUT"]}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(event)))

    code = invoke.main(
        [
            "AlphaFunction",
            "-e",
            "-",
            "-t",
            str(TEMPLATE),
            "--region",
            "eu-west-1",
            "--parameter-overrides",
            "Stage=prod ParameterKey=Undefaulted,ParameterValue=x",
            "--timeout",
            "2",
        ]
    )

    assert code == 0
    assert json.loads(capsys.readouterr().out)["env"] == {
        "STAGE_LABEL": "local-prod-eu-west-1",
        "NEEDS_VALUE": "x",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "2",
    }
    assert invoke.main(["Nope", "-t", str(TEMPLATE)]) == 2
    assert "Nope is not an AWS::Serverless::Function" in capsys.readouterr().err
    assert invoke.main(["-t", str(TEMPLATE)]) == 2  # several functions: one must be named
    assert invoke.main(["AlphaFunction", "-t", str(TEMPLATE), "--parameter-overrides", "x"]) == 2


def test_cli_parses_both_spellings_of_parameter_overrides() -> None:
    parsed = invoke._parse_overrides(
        ["Stage=prod ParameterKey=Undefaulted,ParameterValue=x", 'Note="two words"']
    )

    assert parsed == {"Stage": "prod", "Undefaulted": "x", "Note": "two words"}
