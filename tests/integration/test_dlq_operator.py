"""`meter-relay` as an AWS tool, against moto and the emulator: --stack-name (CloudFormation
outputs, in moto), --profile, --region, --version, --output; one-line errors and their exit
codes; and the confirmation asked before anything is billed, cancelled or deleted, with what
exactly would be (cancel and discard take exactly the events every filter chooses, also out
of an envelope of many customers), plus `dlq show`."""

from __future__ import annotations

import io
import json
import socket
import sys
from pathlib import Path

import pytest

from meter_relay import __version__
from meter_relay.cli import main
from meter_relay.dlq.reading import read_message
from tests.integration.dlq_helpers import (
    METER_KEYS,
    RULES,
    ago,
    api_event,
    deliver_sync,
    forward,
    peek,
    put_letter,
    put_redriven,
    redrive,
    run,
    run_json,
    snapshot,
)
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.plugins.relay import API_VERSION, Relay

pytestmark = pytest.mark.integration


class Terminal(io.StringIO):
    """stdin as a terminal where the operator types `answer`."""

    def isatty(self) -> bool:
        return True


def at_terminal(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(answer + "\n"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def one_line(err: str) -> str:
    """The error: exactly one line, no traceback."""
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("meter-relay: ")
    return err


# ----- --stack-name, --profile, --region, --version, --output ------------------------------------


def create_stack(relay: Relay, name: str, **outputs: str) -> None:
    """A stack in moto whose outputs are those template.yaml declares (values: this relay's)."""
    values = {
        "DeadLetterQueueUrl": relay.dlq_url,
        "UsageQueueUrl": relay.queue_url,
        "StripeSecretArn": relay.secret_id,
        "StripeApiBase": relay.emulator_url,
        "StripeApiVersion": API_VERSION,
        "StripeMode": "test",
        "MeterKeys": json.dumps(METER_KEYS),
        "ValueRule": "positive_integer",
        "DlqReplayFunctionName": f"{name}-DlqReplayFunction",
        **outputs,
    }
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {key: {"Value": value} for key, value in values.items() if value},
    }
    relay.aws.client("cloudformation").create_stack(
        StackName=name, TemplateBody=json.dumps(template)
    )


def test_stack_name_finds_the_queues_the_secret_and_the_settings(
    relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """No DLQ, queue, secret or METER_KEYS in the environment: all from the stack's outputs."""
    create_stack(relay, "billing")
    put_redriven(
        relay, {"event_name": "search_calls", "payload": {"customer": "cus_s", "calls": "2"}}
    )
    put_redriven(relay, api_event("stack-1"))

    code, listed = run_json(capsys, "--stack-name", "billing", "dlq", "list")
    assert code == 0
    assert listed["by_customer"] == {"cus_s": 1, "cus_a": 1}  # METER_KEYS from the stack
    code, replayed = run_json(
        capsys, "dlq", "replay", "--via", "sync", "--yes", "--stack-name", "billing"
    )  # the global options after the command, as the AWS CLI takes them
    assert (code, replayed["counts"]) == (0, {"replayed": 2})
    assert set(relay.emulator.identifiers()) >= {"stack-1"}  # the stack's secret and base
    assert peek(relay) == {}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stack-name", "nope"], "no stack named 'nope' in us-east-1"),
        (
            ["--stack-name", "billing", "--region", "eu-west-1"],
            "no stack named 'billing' in eu-west-1",
        ),
        (["--stack-name", "other"], "the stack 'other' has no output DeadLetterQueueUrl"),
        (["--profile", "nobody"], "The config profile (nobody) could not be found"),
    ],
)
def test_a_stack_region_or_profile_that_is_not_there_is_one_line_and_exit_2(
    argv: list[str], message: str, relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    create_stack(relay, "billing")
    create_stack(relay, "other", DeadLetterQueueUrl="")
    code, out, err = run(capsys, *argv, "dlq", "list")
    assert (code, out) == (2, "")
    assert message in one_line(err)


def test_a_live_stack_refuses_a_test_key_and_a_base_that_is_not_stripes(
    relay: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    put_redriven(relay, api_event("live-1"))
    create_stack(relay, "live", StripeMode="live", StripeApiBase="https://api.stripe.com")
    create_stack(relay, "leaky", StripeMode="live")  # the emulator's base, in a live stack
    code, _, err = run(capsys, "--stack-name", "live", "dlq", "replay", "--via", "sync", "--yes")
    assert code == 2
    assert "holds a test-mode key, but this stack's StripeMode is live" in one_line(err)
    code, _, err = run(capsys, "--stack-name", "leaky", "dlq", "cancel", "--identifiers", "x")
    assert code == 2
    assert "is not Stripe's (https://*.stripe.com) and STRIPE_MODE is live" in one_line(err)
    assert relay.emulator.requests() == []  # no key went anywhere
    assert len(peek(relay)) == 1


def test_version_and_output_as_the_aws_cli_means_them(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"meter-relay {__version__}\n"

    put_redriven(cli, api_event("out-1"))
    code, out, _ = run(capsys, "--output", "json", "dlq", "list")
    assert (code, json.loads(out)["messages"]) == (0, 1)  # one JSON document
    code, out, _ = run(capsys, "dlq", "list")
    assert out.startswith("1 messages, 1 events, by error code\n")  # a table by default
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", "list", "--output", "dead.jsonl"])  # export is --export now
    assert exit_info.value.code == 2
    assert "argument --output: invalid choice: 'dead.jsonl'" in capsys.readouterr().err


def test_aws_out_of_reach_is_exit_3_and_no_credentials_exit_2(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    code, out, err = run(capsys, "dlq", "list")
    assert (code, out) == (3, "")
    assert one_line(err).startswith("meter-relay: cannot reach AWS: Could not connect")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run(capsys, "dlq", "list")
    assert code == 2
    assert one_line(err) == (
        "meter-relay: no AWS credentials: give --profile, or set AWS_PROFILE or AWS_ACCESS_KEY_ID\n"
    )


def test_the_region_is_read_as_the_aws_cli_reads_it(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put_redriven(cli, api_event("region-1"))
    region = cli.aws.env["AWS_DEFAULT_REGION"]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_REGION", region)  # what AWS CLI v2 and the SDKs read first
    code, out, _ = run(capsys, "--output", "json", "dlq", "list")
    assert (code, json.loads(out)["messages"]) == (0, 1)

    monkeypatch.delenv("AWS_REGION")
    code, out, err = run(capsys, "dlq", "list")
    assert (code, out) == (2, "")
    assert one_line(err) == (
        "meter-relay: no AWS region: give --region, or set AWS_REGION or AWS_DEFAULT_REGION\n"
    )


def test_stripe_out_of_reach_is_exit_3_and_the_message_stays(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = put_redriven(cli, api_event("unreached-1"))
    before = snapshot(cli)
    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{closed_port()}")
    code, result = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert code == 3
    (outcome,) = result["outcomes"]
    assert (outcome["message_id"], outcome["code"]) == (message, "no_answer")
    (kept,) = peek(cli).values()  # kept, with what happened last (a redrive takes it)
    assert read_message(kept, RULES).passing
    assert [e.identifier for e in read_message(kept, RULES).events] == ["unreached-1"]
    assert len(before) == 1


# ----- confirmation ---------------------------------------------------------------------------


def test_a_sync_replay_is_asked_first_and_refused_off_a_terminal(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put_redriven(cli, {"events": [api_event("ask-1"), api_event("ask-2", "cus_b")]})
    before = snapshot(cli)
    code, out, err = run(capsys, "dlq", "replay", "--via", "sync")
    assert (code, out) == (2, "")
    assert "refusing to replay --via sync without confirmation" in one_line(err)
    assert "--yes" in err

    at_terminal(monkeypatch, "no")
    code, _, err = run(capsys, "dlq", "replay", "--via", "sync")
    assert code == 2
    assert "2 events of 1 messages would be billed now" in err
    assert err.endswith(
        "Bill these events now? [y/N] meter-relay: not confirmed: nothing was done\n"
    )
    assert snapshot(cli) == before
    assert cli.emulator.requests(endpoint="meter_events") == []

    at_terminal(monkeypatch, "y")
    code, result = run_json(capsys, "dlq", "replay", "--via", "sync")
    assert (code, result["counts"]) == (0, {"replayed": 1})
    assert set(cli.emulator.identifiers()) == {"ask-1", "ask-2"}


def test_cancel_takes_exactly_the_events_of_the_filters_out_of_a_mixed_envelope(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An envelope SQS moved whole after it was delivered: cus_a's and cus_b's api_requests
    and cus_a's search_calls. Cancelling cus_a's api_requests leaves the others counted."""
    search = {"event_name": "search_calls", "payload": {"customer": "cus_a", "calls": "4"}}
    envelope = {
        "events": [api_event(None), api_event(None, "cus_b"), api_event(None, value="2"), search]
    }
    message_id = redrive(cli, envelope)
    ids = [f"{message_id}-{n}" for n in range(4)]
    for identifier, event in zip(ids, envelope["events"], strict=True):
        deliver_sync(cli, {**event, "identifier": identifier})
    chosen = ["--customer", "cus_a", "--event-name", "api_requests"]

    code, result = run_json(capsys, "dlq", "cancel", *chosen, "--dry-run")
    assert code == 0
    assert [(a["identifier"], a["status"]) for a in result["audit"]] == [
        (ids[0], "would_cancel"),
        (ids[2], "would_cancel"),
    ]

    code, out, err = run(capsys, "dlq", "cancel", *chosen)  # not a terminal, no --yes
    assert (code, out) == (2, "")
    assert "refusing to cancel without confirmation" in one_line(err)
    assert cli.emulator.requests(endpoint="adjustments") == []

    at_terminal(monkeypatch, "y")
    code, result = run_json(capsys, "dlq", "cancel", *chosen)
    assert code == 0
    assert sorted(a["identifier"] for a in result["audit"]) == [ids[0], ids[2]]
    err = capsys.readouterr().err
    statuses = {e["identifier"]: e["status"] for e in cli.emulator.events()}
    assert statuses == {
        ids[0]: "cancelled",
        ids[1]: "counted",
        ids[2]: "cancelled",
        ids[3]: "counted",
    }
    assert len(cli.emulator.requests(endpoint="adjustments")) == 2
    assert len(peek(cli)) == 1  # the DLQ is read, never consumed
    assert err == ""


def test_the_cancel_preview_names_what_would_be_cancelled(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    put_redriven(cli, {"events": [api_event("pv-1"), api_event("pv-2", "cus_b")]})
    at_terminal(monkeypatch, "")
    code, _, err = run(capsys, "dlq", "cancel", "--customer", "cus_b")
    assert code == 2
    assert "1 events would be cancelled (event_name, customer: events):" in err
    assert "  api_requests, cus_b: 1\n  pv-2\n" in err
    assert "pv-1" not in err
    assert cli.emulator.requests(endpoint="adjustments") == []


# ----- discard --------------------------------------------------------------------------------


def test_discard_writes_down_exactly_what_it_deletes_after_asking(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope_id = put_redriven(cli, {"events": [api_event(None), api_event(None, "cus_b")]})
    other = put_redriven(cli, api_event("keep-c", "cus_c"))
    before = snapshot(cli)
    record = tmp_path / "discarded.jsonl"

    for argv, message in [
        ([], "choose what to discard: --code, --event-name"),
        (["--customer", "cus_b"], "give --to FILE.jsonl"),
        (["--customer", "cus_b", "--to", str(record)], "refusing to discard without confirmation"),
    ]:
        code, out, err = run(capsys, "dlq", "discard", *argv)
        assert (code, out) == (2, "")
        assert message in one_line(err)
    code, result = run_json(capsys, "dlq", "discard", "--customer", "cus_b", "--dry-run")
    assert (code, result["counts"]) == (0, {"would_discard": 1})
    assert result["outcomes"][0]["identifiers"] == [f"{envelope_id}-1"]
    assert snapshot(cli) == before
    assert not record.exists()

    code, result = run_json(
        capsys, "dlq", "discard", "--customer", "cus_b", "--to", str(record), "--yes"
    )
    assert (code, result["counts"]) == (0, {"partly_discarded": 1})
    (line,) = [json.loads(x) for x in record.read_text().splitlines()]
    assert line["message_id"] == envelope_id
    assert line["body"] == before[envelope_id][0]  # the whole message, as it was
    assert (line["discarded_identifiers"], line["kept_identifiers"]) == (
        [f"{envelope_id}-1"],
        [f"{envelope_id}-0"],
    )
    left = {m["MessageId"]: read_message(m, RULES) for m in peek(cli).values()}
    assert left[other].events[0].identifier == "keep-c"  # not chosen: untouched
    (rest,) = [m for i, m in left.items() if i != other]
    assert [(e.identifier, e.customer) for e in rest.events] == [(f"{envelope_id}-0", "cus_a")]
    assert (rest.code, rest.source_message_id) == ("max_receive_count_exceeded", envelope_id)


# ----- show -----------------------------------------------------------------------------------


def test_show_one_letter_with_its_attributes(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(
        cli, [{"events": [api_event("sh-1", value="0"), api_event("sh-2", value="-1")]}], ["src-1"]
    )
    put_letter(
        cli, api_event("other-1", value="0"), "payload_invalid_value", first_seen=ago(hours=1)
    )
    letters = {read_message(m, RULES).events[0].identifier: i for i, m in peek(cli).items()}

    code, shown = run_json(capsys, "dlq", "show", letters["sh-2"])
    assert code == 0
    (message,) = shown["messages"]
    assert message["message_id"] == letters["sh-2"]
    assert message["attributes"]["ErrorCode"] == "payload_invalid_value"
    assert message["attributes"]["EventIndex"] == "1"
    assert message["events"] == [
        {
            "index": 1,
            "identifier": "sh-2",
            "event_name": "api_requests",
            "customer": "cus_a",
            "valid_now": False,
        }
    ]
    assert "SentTimestamp" in message["sqs_attributes"]

    code, out, _ = run(capsys, "dlq", "show", "src-1")  # the letters of one source message
    assert code == 0
    assert out.count("\nsource message  src-1\n") == 2
    assert "ErrorCode: payload_invalid_value" in out
    code, out, err = run(capsys, "dlq", "show", "no-such-id")
    assert (code, out) == (1, "")
    assert "no message 'no-such-id'" in err
