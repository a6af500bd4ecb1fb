"""Principle 5 end to end: the secret key lives in one place, and nothing secret is logged.

Here: every line a whole local-stack run writes (its stdout and stderr, the forwarder's logs,
the refresher's logs from behind the local Lambda endpoint, the emulator's request log) holds
neither the Stripe secret key nor any session token the run issued; the forwarder's error
paths name no token; no configuration file sets a secret-looking value; no file of the
repository holds a Stripe key.

Elsewhere, not repeated here (docs/security.md lists it all):
- the forwarder's role cannot read the secret and is not told where it is, both queues have
  server-side encryption, no environment value or parameter default of template.yaml nor
  samconfig.toml looks like a key: tests/unit/test_template.py
  (test_forwarder_grants_nothing_on_secrets_manager, test_forwarder_does_not_know_where_the_
  secret_is, test_queues_are_encrypted_and_keep_messages_fourteen_days,
  test_no_environment_value_looks_like_a_secret_key,
  test_no_parameter_default_or_saved_override_looks_like_a_secret_key);
- the refresher's own summaries, logs and errors: tests/integration/test_refresher.py;
- checkov on template.yaml: `make checkov` (devkit/checkov_gate.py), part of `make test`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest

from devkit import local_stack
from devkit.emulator.client import DEFAULT_SECRET_KEY, EmulatorClient
from devkit.lambda_endpoint import LambdaEndpoint
from tests.plugins.relay import Relay, reset_powertools_logger

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# A Stripe key with its material (sk_live_51H...): what must never be in a file or a log.
# The masked forms that the emulator logs (sk_test_****ocal) and the prose "sk_live_..." are not.
STRIPE_KEY = re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}")
LIVE_KEY = re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_live_[A-Za-z0-9]{8,}")
# A session token as the emulator issues them (token_ + 43 URL-safe characters).
SESSION_TOKEN = re.compile(r"(?<![A-Za-z0-9])token_[A-Za-z0-9_-]{32,}")
# In a configuration value, any key prefix at all (a variable names the secret, never holds
# it), a webhook secret, or a session token.
SECRET_LIKE_VALUE = re.compile(
    r"(?<![A-Za-z0-9])(?:(?:sk|rk)_(?:live|test)_|whsec_|token_[A-Za-z0-9_-]{16,})"
)

LOCAL_RUN_ARGS = [
    "--events",
    "600",
    "--envelope-size",
    "10",
    "--window",
    "0.5",
    "--invalid-share",
    "0.05",
]


def leaks(lines: Iterable[str], values: Iterable[str]) -> list[str]:
    """The lines that show one of `values`, or anything shaped like a key or a session token."""
    wanted = [value for value in values if value]
    return [
        line
        for line in lines
        if any(value in line for value in wanted)
        or STRIPE_KEY.search(line)
        or SESSION_TOKEN.search(line)
    ]


def test_the_patterns_recognise_what_they_must() -> None:
    # made of parts, so that this file holds no key-shaped string itself
    live = "sk_" + "live_" + "51HqLyjWDarjtT1zdp7dcXhyV0ZtG7x3Kk0k0XzA9bQ1x"
    token = "token_" + secrets.token_urlsafe(32)
    assert leaks([f"Authorization: Bearer {live}"], []) == [f"Authorization: Bearer {live}"]
    assert LIVE_KEY.search(live)
    assert leaks([f'{{"token": "{token}"}}'], [])
    assert leaks([f"key={DEFAULT_SECRET_KEY}"], [DEFAULT_SECRET_KEY])
    harmless = [
        "Bearer sk_test_****ocal",  # the emulator's masked form
        "Bearer token_****Ab_9",
        "The Stripe secret key (sk_live_... or a restricted rk_live_... key)",
        '"TokenParameterReads": 1, "session_id": "mtres_000001f4fb858b331f"',
    ]
    assert leaks(harmless, []) == []


# ----- a whole local-stack run ------------------------------------------------------------------


@pytest.mark.timeout(240)  # the run itself is bounded at 180 s below
def test_make_run_prints_neither_the_key_nor_a_token() -> None:
    """`make run`, small, as a user runs it: every line of its stdout and stderr (moto server's
    and the emulator's output comes through its stderr).

    Its stdout carries the forwarder's logs and metrics (the forwarder runs in that process);
    the refresher's logs and the emulator's request log stay inside the run, so the next test
    reads those too.
    """
    completed = subprocess.run(  # noqa: S603 (our interpreter, our module)
        [sys.executable, "-m", "devkit.local_stack", *LOCAL_RUN_ARGS, "--json", "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=ROOT,
    )
    lines = completed.stdout.splitlines() + completed.stderr.splitlines()
    assert completed.returncode == 0, "\n".join(lines[-40:])
    assert any('"message":"batch settled"' in line for line in lines)  # the logs were there
    assert any(line.startswith("session ready:") for line in lines)
    assert leaks(lines, [DEFAULT_SECRET_KEY]) == []


class RecordingEndpoint(LambdaEndpoint):
    """The local Lambda endpoint of a run, keeping every line its functions write."""

    instances: ClassVar[list[RecordingEndpoint]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(echo=True, keep_lines=1_000_000)  # echo: into the test's capture as well
        super().__init__(*args, **kwargs)
        RecordingEndpoint.instances.append(self)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Runs of devkit.local_stack in this process, with what they leave behind.

    The refresher's endpoint keeps its output; just before the report (the stack still up),
    the emulator's request log and counts and every version of the session parameter are read.
    """
    seen: dict[str, Any] = {}
    account = local_stack.account

    def account_and_look(
        expected: local_stack.Expected,
        emulator: EmulatorClient,
        dead: dict[str, str],
        seconds: float,
        stats: local_stack.MappingStats,
        **counts: Any,
    ) -> local_stack.Report:
        seen["requests"] = emulator.requests()
        seen["sessions_issued"] = emulator.stats()["sessions"]
        ssm = boto3.client(
            "ssm",
            endpoint_url=os.environ["AWS_ENDPOINT_URL"],
            region_name=os.environ["AWS_DEFAULT_REGION"],
        )
        versions = [
            parameter
            for page in ssm.get_paginator("get_parameter_history").paginate(
                Name=local_stack.SESSION_PARAMETER, WithDecryption=True
            )
            for parameter in page["Parameters"]
        ]
        seen["tokens"] = {json.loads(p["Value"])["token"] for p in versions}
        return account(expected, emulator, dead, seconds, stats, **counts)

    RecordingEndpoint.instances = []
    monkeypatch.setattr(local_stack, "LambdaEndpoint", RecordingEndpoint)
    monkeypatch.setattr(local_stack, "account", account_and_look)
    reset_powertools_logger()
    yield seen
    reset_powertools_logger()


@pytest.mark.timeout(240)  # the run itself gives up after 120 s
def test_no_log_of_a_local_run_shows_the_key_or_any_session_token(
    recording: dict[str, Any], capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the template's POWERTOOLS_LOG_LEVEL; see docs/security.md
    # Sessions of 1.5 s: the refresher renews them during the run (the report then accounts
    # for every event all the same).
    # Batches of 10 records: several invocations.
    options = local_stack.Options(
        events=600,
        envelope_size=10,
        batch_size=10,
        window=0.5,
        invalid_share=0.05,
        timeout=120,
        session_ttl=1.5,
    )
    report = local_stack.run(options)
    print(report.render())
    captured = capfd.readouterr()
    assert report.ok, captured.out[-3000:]

    # two local Lambda endpoints: the refresher's, then ErrorReportsFunction's
    endpoints: list[RecordingEndpoint] = RecordingEndpoint.instances
    assert len(endpoints) == 2
    refresher_lines = endpoints[0].output()
    function_lines = [line for endpoint in endpoints for line in endpoint.output()]
    tokens: set[str] = recording["tokens"]
    # every session the emulator issued went into the parameter: we hold every token
    assert len(tokens) == recording["sessions_issued"] >= 2
    request_log = [json.dumps(entry) for entry in recording["requests"]]

    # stdout and stderr, and the records of plain `logging` loggers (meter_relay.delivery's),
    # which pytest takes before they reach stderr
    lines = captured.out.splitlines() + captured.err.splitlines() + caplog.text.splitlines()
    assert any('"message":"batch settled"' in line for line in lines)  # the forwarder's logs
    assert any('"message":"session checked"' in line for line in refresher_lines)
    assert any('"function_name":"RefresherFunction"' in line for line in lines)  # echoed
    # the request log records the credentials of every call, masked
    headers = [entry["headers"] for entry in recording["requests"]]
    assert any(h.get("authorization", "").startswith("Bearer sk_test_****") for h in headers)
    assert any(h.get("authorization", "").startswith("Bearer token_****") for h in headers)

    secret = [DEFAULT_SECRET_KEY, *tokens]
    assert leaks(lines, secret) == []
    assert leaks(function_lines, secret) == []
    assert leaks(request_log, secret) == []
    # the functions were configured with the secret's name only
    for endpoint in endpoints:
        configuration = json.dumps([endpoint.env_vars, endpoint.extra_env])
        assert local_stack.SECRET_NAME in configuration
        assert leaks([configuration], secret) == []


# ----- the forwarder's error paths ------------------------------------------------------------


def _event(identifier: str) -> dict[str, Any]:
    return {
        "event_name": "api_requests",
        "identifier": identifier,
        "payload": {"stripe_customer_id": "cus_security", "value": "1"},
    }


def _store(relay: Relay, session: dict[str, Any]) -> None:
    relay.aws.client("ssm").put_parameter(
        Name=relay.parameter, Value=json.dumps(session), Type="SecureString", Overwrite=True
    )


@pytest.mark.parametrize("case", ["expired, renewed by the refresher", "unknown to Stripe"])
def test_refused_tokens_are_not_logged(
    relay: Relay, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.INFO)
    session = relay.put_session()
    tokens = {session["token"]}
    if case == "unknown to Stripe":
        session["token"] = "token_" + secrets.token_urlsafe(32)  # well formed, never issued
        _store(relay, session)
        tokens.add(session["token"])
    else:
        assert relay.emulator.expire_sessions() == 1
    sqs_event = relay.sqs_event([_event(f"security-{n}") for n in range(3)])
    refresher = case.startswith("expired")
    with relay.forwarder(refresher=refresher) as forwarder:
        invocation = forwarder.invoke(sqs_event)
    captured = capfd.readouterr()

    statuses = [entry["status"] for entry in relay.emulator.requests(endpoint="stream")]
    assert 401 in statuses  # the token really was refused
    result = json.dumps(invocation.result if invocation.error is None else invocation.error)
    lines = captured.out.splitlines() + captured.err.splitlines() + caplog.text.splitlines()
    assert any('"message":"batch settled"' in line for line in lines)  # the logs were captured
    endpoint_lines: list[str] = []
    if refresher:
        assert json.loads(result)["batchItemFailures"] == []  # delivered with a new session
        renewed = relay.stored_session()
        assert renewed is not None
        tokens.add(renewed["token"])
        endpoint_lines = relay.endpoint.get().output()  # the refresher's logs
        assert any('"message":"session checked"' in line for line in endpoint_lines)
    else:
        assert len(json.loads(result)["batchItemFailures"]) == 3  # returned to the queue
        assert any(record.levelno >= logging.WARNING for record in caplog.records)
    request_log = [json.dumps(entry) for entry in relay.emulator.requests()]
    secret = [relay.secret_key, *tokens]
    for text in (lines, endpoint_lines, request_log, [result]):
        assert leaks(text, secret) == []


def test_even_at_debug_level_nothing_secret_is_logged(
    relay: Relay, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Root logger and Powertools at DEBUG, as an operator chasing a problem might set them.

    botocore at DEBUG would log GetSecretValue's response (the key) and the session parameter's
    value: meter_relay.observability keeps it at INFO.
    """
    caplog.set_level(logging.DEBUG)
    debug = {"POWERTOOLS_LOG_LEVEL": "DEBUG"}
    with relay.refresher(env=debug) as refresher:
        assert refresher.invoke({"force": True}).error is None
    sqs_event = relay.sqs_event([_event("security-debug")])
    with relay.forwarder(env=debug) as forwarder:
        invocation = forwarder.invoke(sqs_event)
    assert invocation.error is None
    assert invocation.result == {"batchItemFailures": []}
    captured = capfd.readouterr()
    session = relay.stored_session()
    assert session is not None
    lines = captured.out.splitlines() + captured.err.splitlines() + caplog.text.splitlines()
    debug_records = [record for record in caplog.records if record.levelno == logging.DEBUG]
    assert debug_records  # DEBUG was on (urllib3's, Powertools')
    assert leaks(lines, [relay.secret_key, session["token"]]) == []
    assert not [record for record in debug_records if record.name.startswith("botocore")]


# ----- configuration and files ------------------------------------------------------------------


def _makefile_assignments(text: str) -> dict[str, str]:
    """NAME := value, export NAME ?= value, and NAME=value set inline in a recipe."""
    found: dict[str, str] = {}
    definition = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|\+=|=)(.*)$")
    inline = re.compile(r"(?<![\w$(])([A-Z_][A-Z0-9_]*)=(\"[^\"]*\"|'[^']*'|\S+)")
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        if not line.startswith("\t") and (match := definition.match(line)):
            found[f"{match[1]} (line {number})"] = match[2].strip()
        for match in inline.finditer(line):
            found[f"{match[1]} (line {number})"] = match[2]
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield str(value)


def test_no_configuration_sets_a_secret_looking_value() -> None:
    """events/env.json (sam local's variables), the Makefile's variables, every sample event.

    template.yaml and samconfig.toml: tests/unit/test_template.py.
    """
    env_json = json.loads((ROOT / "events" / "env.json").read_text(encoding="utf-8"))
    values = {
        f"events/env.json {section}.{name}": str(value)
        for section, variables in env_json.items()
        for name, value in variables.items()
    }
    assert "events/env.json RefresherFunction.STRIPE_SECRET_ID" in values  # a name, not a key
    makefile = _makefile_assignments((ROOT / "Makefile").read_text(encoding="utf-8"))
    assert any(name.startswith("AWS_DEFAULT_REGION") for name in makefile)
    values.update({f"Makefile {name}": value for name, value in makefile.items()})
    for sample in sorted((ROOT / "events").glob("*.json")):
        document = json.loads(sample.read_text(encoding="utf-8"))
        for n, text in enumerate(_strings(document)):
            values[f"{sample.relative_to(ROOT)} string {n}"] = text
    secret_looking = {name: text for name, text in values.items() if SECRET_LIKE_VALUE.search(text)}
    assert secret_looking == {}


def _repository_files() -> list[Path]:
    """Tracked files, and untracked ones that are not ignored (what the next commit may add)."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(  # noqa: S603 (git, fixed arguments)
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name]


def test_no_file_of_the_repository_holds_a_stripe_key() -> None:
    files = _repository_files()
    assert any(path.name == "template.yaml" for path in files)
    found: list[str] = []
    for path in files:
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            # a live key anywhere; a test key only with the material of a real one
            if LIVE_KEY.search(line) or re.search(r"(?:sk|rk)_test_[A-Za-z0-9]{24,}", line):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert found == []
