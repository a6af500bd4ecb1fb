"""`meter-relay dlq list|replay|cancel` against moto (SQS, Secrets Manager) and the emulator.

The CLI runs in-process (`meter_relay.cli.main`) with the environment an operator would set,
and once as `python -m meter_relay`. Dead letters are real: the forwarder's own (through the
harness, on bad input), messages that SQS moved after maxReceiveCount (received more than
MAX_RECEIVE_COUNT times, or their body sent straight to the DLQ, as the redrive leaves it), and
forwarder-shaped letters built with the forwarder's own DeadLetter where a test needs a past
FirstSeen. Queues stay shallow; every scan ends with one empty long poll (about a second).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter_relay.cli import main
from meter_relay.dlq.reading import read_message
from meter_relay.dlq.scan import DeadLetterReader
from meter_relay.events import format_timestamp
from tests.integration.dlq_helpers import (
    METER_KEYS,
    RULES,
    ago,
    api_event,
    by_message,
    deliver_sync,
    forward,
    peek,
    put_letter,
    put_redriven,
    redrive,
    run,
    run_json,
    snapshot,
    take_usage_queue,
    usage_queue_depth,
)
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.plugins.relay import MAX_RECEIVE_COUNT, ROOT, SECRET_KEY, Relay, queue_url

pytestmark = pytest.mark.integration

# ----- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["dlq"], ["dlq", "list"], ["dlq", "replay"], ["dlq", "cancel"]],
    ids=lambda argv: " ".join(["meter-relay", *argv]),
)
def test_help_on_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: meter-relay {' '.join(argv)}".rstrip())
    if argv[1:] == ["replay"]:
        for flag in ("--fix", "--via", "--dry-run", "--rate", "--code", "--since", "--max"):
            assert flag in out
    if argv[1:] == ["cancel"]:
        for flag in ("--identifiers", "--event-name", "--audit", "--dry-run", "--customer"):
            assert flag in out


def test_a_missing_setting_is_one_clear_line(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DEAD_LETTER_QUEUE_URL")
    code, out, err = run(capsys, "dlq", "list")
    assert code == 2
    assert out == ""
    assert err == (
        "meter-relay: the DLQ is not known: give --stack-name, or --dlq-url "
        "(or DEAD_LETTER_QUEUE_URL)\n"
    )


# ----- list -------------------------------------------------------------------------------------


def test_list_summarises_and_exports_without_consuming(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(
        cli,
        [
            api_event("list-neg", "cus_a", "-1"),
            {"event_name": "search_calls", "identifier": "list-nocust", "payload": {"calls": "2"}},
            "not json",
            {"events": [api_event("list-env-0", "cus_b", "0"), api_event(None, "cus_b", "x")]},
        ],
        ["list-neg", "list-nocust", "list-notjson", "list-env"],
    )
    redriven = redrive(cli, api_event(None, "cus_c", "4"))
    before = snapshot(cli)
    assert len(before) == 6

    code, out, _ = run(capsys, "dlq", "list")
    assert code == 0
    assert "6 messages, 5 events, by error code" in out
    for row in (
        "payload_invalid_value               3",
        "payload_no_customer_defined         1",
        "message_not_json                    1",
        "max_receive_count_exceeded          1",
    ):
        assert " ".join(row.split()) in " ".join(out.split())
    assert "by event_name" in out
    assert "by customer (top 20)" in out
    assert "< 1 hour" in out

    export = tmp_path / "dlq.jsonl"
    code, summary = run_json(capsys, "dlq", "list", "--export", str(export))
    assert code == 0
    scan = summary.pop("scan")
    assert (scan["seen"], scan["depth"], scan["unseen"]) == (6, 6, 0)
    assert summary == {
        "complete": True,
        "stopped": None,
        "shortfall": None,
        "messages": 6,
        "events": 5,
        "by_code": {
            "payload_invalid_value": 3,
            "payload_no_customer_defined": 1,
            "message_not_json": 1,
            "max_receive_count_exceeded": 1,
        },
        "by_event_name": {"api_requests": 4, "search_calls": 1},
        "by_customer": {"cus_a": 1, "cus_b": 2, "cus_c": 1, "(none)": 1},
        "by_age": {"< 1 hour": 6},
    }
    exported = [json.loads(line) for line in export.read_text().splitlines()]
    assert SECRET_KEY not in export.read_text()
    assert {m["message_id"] for m in exported} == set(before)
    for message in exported:
        assert message["body"] == before[message["message_id"]][0]
        attributes = before[message["message_id"]][1]
        assert message["attributes"] == {k: v["StringValue"] for k, v in attributes.items()}
    identifiers: dict[str, list[str]] = {}
    for message in exported:
        identifiers.setdefault(message["source_message_id"], []).extend(message["identifiers"])
    assert {source: sorted(found) for source, found in identifiers.items()} == {
        "list-neg": ["list-neg"],
        "list-nocust": ["list-nocust"],
        "list-notjson": [],
        "list-env": ["list-env-0", "list-env-1"],  # one letter each, the second derived
        redriven: [f"{redriven}-0"],  # derived from the messageId SQS kept
    }
    assert [m["code"] for m in exported if m["redriven"]] == ["max_receive_count_exceeded"]

    assert snapshot(cli) == before  # nothing consumed, nothing hidden, nothing changed


def test_console_entry_runs_as_a_module(cli: Relay) -> None:
    put_redriven(cli, api_event("module-1"))
    completed = subprocess.run(
        [sys.executable, "-m", "meter_relay", "dlq", "list", "--output", "json"],
        env=dict(os.environ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["by_code"] == {"max_receive_count_exceeded": 1}
    assert SECRET_KEY not in completed.stdout + completed.stderr
    assert len(peek(cli)) == 1


def test_a_scan_slower_than_its_hold_ends_after_one_pass(cli: Relay) -> None:
    """Against SQS (moto), held 1 s, read at 0.3 s a message: what it saw first would show
    again and keep the receives coming; it is hidden again while the pass runs, and the
    pass ends once every message was seen, giving all back."""
    ids = {put_redriven(cli, api_event(f"slow-{n}")) for n in range(10)}
    reader = DeadLetterReader(cli.aws.client("sqs"), cli.dlq_url, RULES)
    seen = []
    with closing(reader.scan(hold=1)) as scan:
        for message in scan:
            seen.append(message.message_id)
            time.sleep(0.3)
    assert sorted(seen) == sorted(ids)  # each once
    counts = cli.aws.client("sqs").get_queue_attributes(
        QueueUrl=cli.dlq_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "10",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


# ----- replay: correct, send, deliver -------------------------------------------------------


def test_correct_and_replay_then_the_forwarder_delivers_with_the_same_identifiers(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(
        cli,
        [
            # a typo in the event_name: validated with the default keys, so no customer
            {"event_name": "search_call", "payload": {"customer": "cus_s", "calls": "2"}},
            # the customer under the wrong key, and a customer id that has since changed
            api_event("remap-1", value="3") | {"payload": {"customer_id": "cus_old", "value": 3}},
        ],
        ["fix-rename", "fix-remap"],
    )
    before = {
        str(read_message(m, RULES).events[0].identifier): m["MessageAttributes"]["ErrorCode"]
        for m in peek(cli).values()
    }
    assert before == {
        "fix-rename-0": {"DataType": "String", "StringValue": "payload_no_customer_defined"},
        "remap-1": {"DataType": "String", "StringValue": "payload_no_customer_defined"},
    }
    fix = tmp_path / "fix.json"
    fix.write_text(
        json.dumps(
            {
                "event_names": {"search_call": "search_calls"},
                "payload_keys": {"customer_id": "stripe_customer_id"},
                "customers": {"cus_old": "cus_new"},
            }
        )
    )

    code, result = run_json(capsys, "dlq", "replay", "--fix", str(fix))
    assert code == 0
    assert result["complete"] is True
    assert result["counts"] == {"replayed": 2}
    assert sorted(i for o in result["outcomes"] for i in o["identifiers"]) == sorted(before)
    assert peek(cli) == {}  # both left the DLQ: they are on the usage queue

    replayed = take_usage_queue(cli)
    bodies = {json.loads(m["Body"])["identifier"]: json.loads(m["Body"]) for m in replayed}
    assert bodies["fix-rename-0"]["event_name"] == "search_calls"
    assert bodies["remap-1"]["payload"] == {"stripe_customer_id": "cus_new", "value": "3"}
    with cli.forwarder(env={"METER_KEYS": json.dumps(METER_KEYS)}) as forwarder:
        sqs_event = cli.sqs_event([m["Body"] for m in replayed], [m["MessageId"] for m in replayed])
        invocation = forwarder.invoke(sqs_event)
    assert invocation.result == {"batchItemFailures": []}

    identifiers = cli.emulator.identifiers()
    assert identifiers == {i: {"received": 1, "counted": 1} for i in before}  # the same ones
    (renamed,) = cli.emulator.events(identifier="fix-rename-0")
    assert (renamed["event_name"], renamed["status"]) == ("search_calls", "counted")
    (remapped,) = cli.emulator.events(identifier="remap-1")
    assert remapped["payload"]["stripe_customer_id"] == "cus_new"
    assert cli.emulator.errors()["total"] == 0
    assert peek(cli) == {}


def test_a_dry_run_changes_nothing(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(cli, [api_event(None) | {"payload": {"customer_id": "cus_a", "value": "1"}}], ["dry"])
    redriven = put_redriven(cli, api_event("dry-redriven"))
    fix = tmp_path / "fix.json"
    fix.write_text(json.dumps({"payload_keys": {"customer_id": "stripe_customer_id"}}))
    before = snapshot(cli)

    code, result = run_json(capsys, "dlq", "replay", "--dry-run")
    assert code == 1  # the letter cannot be sent uncorrected: reported, kept
    outcomes = by_message(result["outcomes"])
    assert outcomes[redriven]["action"] == "would_replay"
    (letter_id,) = set(before) - {redriven}
    assert (outcomes[letter_id]["action"], outcomes[letter_id]["code"]) == (
        "kept",
        "payload_no_customer_defined",
    )

    code, result = run_json(
        capsys, "dlq", "replay", "--via", "sync", "--dry-run", "--fix", str(fix)
    )
    assert code == 0
    assert result["counts"] == {"would_replay": 2}
    assert sorted(i for o in result["outcomes"] for i in o["identifiers"]) == [
        "dry-0",
        "dry-redriven",
    ]

    assert snapshot(cli) == before
    assert usage_queue_depth(cli) == 0
    assert cli.emulator.requests(endpoint="meter_events") == []
    assert cli.emulator.events() == []


def test_nothing_leaves_the_dlq_unless_it_was_resent(
    cli: Relay, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = put_redriven(cli, api_event("resend-1"))
    second = put_redriven(cli, {"events": [api_event("resend-2"), api_event(None)]})
    before = snapshot(cli)
    monkeypatch.setenv("USAGE_QUEUE_URL", queue_url(cli.aws.endpoint_url, "no-such-queue"))

    for command in ("replay", "redrive"):  # checked before the DLQ is touched
        code, out, err = run(capsys, "dlq", command)
        assert (code, out) == (2, "")
        assert err.startswith("meter-relay: the queue does not exist: GetQueueAttributes: ")
        assert err.count("\n") == 1
    assert snapshot(cli) == before  # still there, visible at once

    monkeypatch.setenv("USAGE_QUEUE_URL", cli.queue_url)
    code, result = run_json(capsys, "dlq", "replay")
    assert code == 0
    assert by_message(result["outcomes"])[second]["identifiers"] == ["resend-2", f"{second}-1"]
    assert by_message(result["outcomes"])[first]["identifiers"] == ["resend-1"]
    assert peek(cli) == {}
    assert len(take_usage_queue(cli)) == 2


@pytest.mark.parametrize("via", ["queue", "sync"])
def test_the_valid_events_of_a_redriven_envelope_go_and_each_other_stays_as_a_letter(
    via: str, cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    too_old = format_timestamp(ago(days=40))
    envelope = {
        "events": [
            api_event(None, value="5"),
            api_event(None, value="-1"),
            api_event(None, value="6"),
            api_event("mixed-old", value="7", timestamp=too_old),
        ]
    }
    redriven = redrive(cli, envelope)

    code, result = run_json(capsys, "dlq", "replay", "--via", via, "--yes")
    assert code == 1  # two events stay
    (outcome,) = result["outcomes"]
    assert (outcome["action"], outcome["code"]) == ("partly_replayed", "payload_invalid_value")
    assert outcome["identifiers"] == [f"{redriven}-0", f"{redriven}-2"]
    assert [(e["identifier"], e["code"]) for e in outcome["kept_events"]] == [
        (f"{redriven}-1", "payload_invalid_value"),
        ("mixed-old", "timestamp_too_far_in_past"),
    ]

    letters = sorted(
        (read_message(m, RULES) for m in peek(cli).values()),
        key=lambda m: m.attributes["EventIndex"],
    )
    assert [(m.code, m.attributes["EventIndex"], m.source_message_id) for m in letters] == [
        ("payload_invalid_value", "1", redriven),
        ("timestamp_too_far_in_past", "3", redriven),
    ]
    assert [m.events[0].identifier for m in letters] == [f"{redriven}-1", "mixed-old"]
    assert redriven not in peek(cli)  # the original left, once both were done
    if via == "queue":
        (resent,) = take_usage_queue(cli)
        events = json.loads(resent["Body"])["events"]
        assert [e["payload"]["value"] for e in events] == ["5", "6"]
    else:
        counted = {i: c["counted"] for i, c in cli.emulator.identifiers().items()}
        assert counted == {f"{redriven}-0": 1, f"{redriven}-2": 1}

    # a second run replays none of it again: what stays cannot be sent as it is
    code, result = run_json(capsys, "dlq", "replay", "--via", via, "--yes")
    assert (code, result["counts"]) == (1, {"kept": 1, "skipped": 1})
    assert len(peek(cli)) == 2


def test_old_events_are_not_sent_and_stale_ones_are_named(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    too_old = format_timestamp(ago(days=40))
    forward(cli, [api_event("too-old", timestamp=too_old)], ["old"])
    stale = put_letter(
        cli,
        api_event("stale-1", timestamp=format_timestamp(ago(hours=25))),
        "payload_invalid_value",
        first_seen=ago(hours=25),
    )

    code, out, err = run(capsys, "dlq", "replay")
    assert code == 1
    assert f"warning: {stale} (stale-1): first seen more than 24 hours ago" in err
    assert "too-old" not in err
    assert "skipped" in out
    assert "timestamp_too_far_in_past" in out  # the reason it stays

    left = peek(cli)
    assert [read_message(m, RULES).events[0].identifier for m in left.values()] == ["too-old"]
    (sent,) = take_usage_queue(cli)
    assert json.loads(sent["Body"])["identifier"] == "stale-1"


def millis_of(moment: datetime) -> tuple[str, str]:
    """A moment as SQS's SentTimestamp (milliseconds) and as the RFC 3339 text it stands for."""
    millis = int(moment.timestamp() * 1000)
    return str(millis), format_timestamp(datetime.fromtimestamp(millis / 1000, UTC))


def test_a_letter_replays_with_the_time_its_producer_sent_it(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An event without a timestamp is counted at its message's send time, also after the
    DLQ: the forwarder writes that time into the letter, not the letter's own send time."""
    sent_millis, sent_text = millis_of(ago(hours=3))
    cli.put_session()
    misplaced = api_event(None) | {"payload": {"customer_id": "cus_a", "value": "1"}}
    event = cli.sqs_event([misplaced], ["sent-3h-ago"])
    event["Records"][0]["attributes"]["SentTimestamp"] = sent_millis
    with cli.forwarder(env={"METER_KEYS": json.dumps(METER_KEYS)}) as forwarder:
        assert forwarder.invoke(event).result == {"batchItemFailures": []}
    (letter,) = peek(cli).values()
    assert json.loads(letter["Body"])["timestamp"] == sent_text

    fix = tmp_path / "fix.json"
    fix.write_text(json.dumps({"payload_keys": {"customer_id": "stripe_customer_id"}}))
    code, result = run_json(capsys, "dlq", "replay", "--fix", str(fix))
    assert (code, result["counts"]) == (0, {"replayed": 1})
    (replayed,) = take_usage_queue(cli)
    body = json.loads(replayed["Body"])
    assert (body["identifier"], body["timestamp"]) == ("sent-3h-ago-0", sent_text)


def test_a_redriven_message_replays_with_its_original_send_time(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    sqs = cli.aws.client("sqs")
    sqs.send_message(QueueUrl=cli.queue_url, MessageBody=json.dumps(api_event(None)))
    (first,) = sqs.receive_message(
        QueueUrl=cli.queue_url, VisibilityTimeout=0, AttributeNames=["SentTimestamp"]
    )["Messages"]
    sent_text = millis_of(
        datetime.fromtimestamp(int(first["Attributes"]["SentTimestamp"]) / 1000, UTC)
    )[1]
    time.sleep(1.1)  # moved a second later: the move's time would show
    for _ in range(MAX_RECEIVE_COUNT):
        sqs.receive_message(QueueUrl=cli.queue_url, VisibilityTimeout=0)
    assert list(peek(cli)) == [first["MessageId"]]

    code, result = run_json(capsys, "dlq", "replay")
    assert (code, result["counts"]) == (0, {"replayed": 1})
    (replayed,) = take_usage_queue(cli)
    body = json.loads(replayed["Body"])
    assert (body["identifier"], body["timestamp"]) == (f"{first['MessageId']}-0", sent_text)


def test_an_envelope_that_outgrows_sqs_when_written_back_replays_as_several_messages(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    """A producer's envelope of 6,000 events, about 600 KB, which SQS took: written back with
    each event's identifier and timestamp it would pass SQS's 1 MiB. It goes back as several
    messages, none over 256 KiB, and the forwarder delivers every event once."""
    body = json.dumps({"events": [api_event(None) for _ in range(6000)]})
    assert 500_000 < len(body) < 1024 * 1024
    message_id = put_redriven(cli, body)

    code, result = run_json(capsys, "dlq", "replay")
    assert (code, result["counts"]) == (0, {"replayed": 1})
    assert peek(cli) == {}
    replayed = take_usage_queue(cli)
    assert len(replayed) > 2
    assert max(len(m["Body"].encode()) for m in replayed) <= 256 * 1024
    forward(cli, [m["Body"] for m in replayed], [m["MessageId"] for m in replayed])
    expected = {f"{message_id}-{i}": {"received": 1, "counted": 1} for i in range(6000)}
    assert cli.emulator.identifiers() == expected


# ----- replay through the synchronous endpoint --------------------------------------------


def test_sync_replay_with_each_answer(cli: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    deliver_sync(cli, api_event("dup-1", "cus_d"))  # already counted before the replay
    ok = put_redriven(cli, api_event("sync-ok", "cus_a"))
    dup = put_redriven(cli, api_event("dup-1", "cus_d"))
    no_meter = put_redriven(cli, {"event_name": "nope", "payload": api_event("x")["payload"]})
    archived = put_redriven(
        cli,
        {
            "event_name": "legacy_metric",
            "identifier": "legacy-1",
            "payload": api_event("x")["payload"],
        },
    )
    envelope = put_redriven(
        cli,
        {
            "events": [
                api_event(None, "cus_e"),
                {"event_name": "nope", "payload": {"stripe_customer_id": "cus_e", "value": "1"}},
            ]
        },
    )

    code, result = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert code == 1
    outcomes = by_message(result["outcomes"])
    assert {m: (o["action"], o["code"]) for m, o in outcomes.items()} == {
        ok: ("replayed", None),
        dup: ("replayed", None),  # duplicate_meter_event: already counted, a success
        no_meter: ("kept", "no_meter"),
        archived: ("kept", "archived_meter"),
        envelope: ("partly_replayed", "no_meter"),  # the first event counted
    }

    def kept() -> dict[str, tuple[str, list[str | None]]]:
        found = {}
        for message in peek(cli).values():
            read = read_message(message, RULES)
            found[read.source_message_id] = (read.code, [e.identifier for e in read.events])
        return found

    assert kept() == {  # copies with the new code and the identifiers they had
        no_meter: ("no_meter", [f"{no_meter}-0"]),
        archived: ("archived_meter", ["legacy-1"]),
        # only what Stripe has not counted (a replay after 24 hours cannot count the rest
        # twice), as a letter of its own, with Stripe's reason
        envelope: ("no_meter", [f"{envelope}-1"]),
    }
    counted = {i: c["counted"] for i, c in cli.emulator.identifiers().items() if c["counted"]}
    assert counted == {"sync-ok": 1, "dup-1": 1, f"{envelope}-0": 1}

    # a kept copy replays like the original did (it is not taken twice in one run)
    earlier = len(cli.emulator.requests(endpoint="meter_events"))
    code, result = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes", "--code", "no_meter")
    assert code == 1
    assert result["counts"] == {"kept": 2}
    assert kept()[envelope] == ("no_meter", [f"{envelope}-1"])
    sent_again = cli.emulator.requests(endpoint="meter_events")[earlier:]
    assert [r["status"] for r in sent_again] == [400, 400]
    assert cli.emulator.counted_more_than_once() == []


def test_sync_replay_retries_409(cli: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    # seed 4: the first request answers 409, the next one proceeds
    cli.emulator.set_faults("meter_events", seed=4, error_rate=0.5, error_statuses=[409])
    put_redriven(cli, api_event("conflict-1"))

    code, result = run_json(capsys, "dlq", "replay", "--via", "sync", "--yes")
    assert code == 0
    assert result["counts"] == {"replayed": 1}
    statuses = [r["status"] for r in cli.emulator.requests(endpoint="meter_events")]
    assert sorted(statuses) == [200, 409]
    assert cli.emulator.identifiers() == {"conflict-1": {"received": 1, "counted": 1}}
    assert peek(cli) == {}


# ----- filters ----------------------------------------------------------------------------------


def test_filters_select_what_they_say(cli: Relay, capsys: pytest.CaptureFixture[str]) -> None:
    m1 = put_letter(cli, api_event("f-1", "cus_a"), "payload_invalid_value", ago(hours=2))
    m2 = put_letter(cli, api_event("f-2", "cus_b"), "payload_invalid_value", ago(minutes=30))
    search = {"event_name": "search_calls", "identifier": "f-3", "payload": {"customer": "cus_a"}}
    m3 = put_letter(cli, search, "payload_no_customer_defined", ago(minutes=10))
    m4 = put_redriven(cli, api_event("f-4", "cus_c"))
    before = snapshot(cli)

    def chosen(*flags: str) -> tuple[set[str], bool]:
        _, result = run_json(capsys, "dlq", "replay", "--dry-run", "--rate", "100", *flags)
        return {o["message_id"] for o in result["outcomes"]}, result["complete"]

    assert chosen("--code", "payload_invalid_value", "--customer", "cus_a") == ({m1}, True)
    since, until = format_timestamp(ago(hours=1)), format_timestamp(ago(minutes=5))
    assert chosen(
        "--event-name", "search_calls", "--event-name", "api_requests", "--since", since,
        "--until", until,
    ) == ({m2, m3}, True)  # fmt: skip
    assert chosen("--customer", "cus_c") == ({m4}, True)
    selected, complete = chosen("--code", "payload_invalid_value", "--max", "1")
    assert len(selected) == 1
    assert selected <= {m1, m2}
    assert complete is False  # another one matched: run again to continue

    code, _, err = run(capsys, "dlq", "replay", "--since", "yesterday")
    assert code == 2
    assert "--since takes an RFC 3339 date-time" in err
    assert snapshot(cli) == before


@pytest.mark.parametrize("command", ["list", "replay", "cancel"])
@pytest.mark.parametrize("value", ["-1", "0", "2.5", "all"])
def test_max_takes_only_a_whole_number_above_zero(
    command: str, value: str, cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dlq", command, "--max", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --max: must be a whole number above 0, not '{value}'" in err


def test_a_dry_run_shows_what_would_happen_to_each_message(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    good = put_redriven(cli, api_event("dry-line-1"))
    mixed = put_redriven(
        cli, {"events": [api_event("dry-line-2"), api_event("dry-line-3", value="-1")]}
    )
    bad = put_letter(cli, api_event("dry-line-4", value="0"), "payload_invalid_value", ago(hours=1))

    code, out, _ = run(capsys, "dlq", "replay", "--dry-run")
    assert code == 1  # something would stay
    rows = [line.split(maxsplit=2) for line in out.splitlines() if line.strip()]
    lines = {row[0]: row[1:] for row in rows if row[0] in (good, mixed, bad)}
    assert len(lines) == 3  # one line each
    assert lines[good] == ["would_replay", "1 events via queue"]
    assert lines[mixed][0] == "would_replay"
    assert lines[mixed][1].startswith("1 events via queue; 1 stay in the DLQ: event 1: value '-1'")
    assert lines[bad][0] == "kept"
    assert lines[bad][1].startswith("1 stay in the DLQ: event 0: value '0' is not")
    assert len(peek(cli)) == 3


# ----- cancel -----------------------------------------------------------------------------------


def test_cancel_identifiers_inside_and_outside_24_hours(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forward(cli, [api_event("c-1"), api_event("c-2"), api_event("c-3")], ["c1", "c2", "c3"])
    identifiers = tmp_path / "ids.txt"
    identifiers.write_text("c-1\n\nc-2\n")
    audit = tmp_path / "audit.jsonl"
    cancel = ["dlq", "cancel", "--identifiers", str(identifiers), "--event-name", "api_requests"]

    code, out, _ = run(capsys, *cancel, "--dry-run", "--audit", str(audit))
    assert code == 0
    assert [json.loads(line)["status"] for line in out.splitlines()[:2]] == ["would_cancel"] * 2
    assert cli.emulator.requests(endpoint="adjustments") == []
    # a run in parts: --max takes the first, --skip the audit of what was done; a run that
    # stopped early exits 1, as replay and discard do, so a script knows more is left
    code, part = run_json(capsys, *cancel, "--dry-run", "--max", "1")
    assert (code, [a["identifier"] for a in part["audit"]], part["complete"]) == (1, ["c-1"], False)
    done = tmp_path / "done.txt"
    done.write_text("c-1\n")
    code, rest = run_json(capsys, *cancel, "--dry-run", "--skip", str(done))
    assert (code, [a["identifier"] for a in rest["audit"]], rest["complete"]) == (0, ["c-2"], True)
    # an audit's failed cancel (no final word from Stripe) is not done: the next run retries it
    done.write_text(
        json.dumps({"identifier": "c-1", "event_name": "api_requests", "status": "failed"})
        + "\n"
        + json.dumps({"identifier": "c-2", "event_name": "api_requests", "status": "pending"})
        + "\n"
    )
    code, rest = run_json(capsys, *cancel, "--dry-run", "--skip", str(done))
    assert (code, [a["identifier"] for a in rest["audit"]]) == (0, ["c-1"])
    code, _, err = run(capsys, *cancel, "--dry-run", "--customer", "cus_a")
    assert (code, err) == (
        2,
        "meter-relay: --customer chooses letters in the DLQ: not with --identifiers\n",
    )

    code, out, _ = run(capsys, *cancel, "--yes", "--audit", str(audit))
    assert code == 0
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(p["identifier"], p["event_name"], p["status"]) for p in printed] == [
        ("c-1", "api_requests", "pending"),
        ("c-2", "api_requests", "pending"),
    ]
    for line in printed:
        assert line["adjustment_id"].startswith("mtradj")
        assert datetime.fromisoformat(line["at"]) > ago(minutes=5)
    adjustments = cli.emulator.adjustments()
    assert {a["id"] for a in adjustments} == {p["adjustment_id"] for p in printed}
    assert {a["status"] for a in adjustments} == {"complete"}
    assert {e["identifier"]: e["status"] for e in cli.emulator.events()} == {
        "c-1": "cancelled",
        "c-2": "cancelled",
        "c-3": "counted",
    }
    logged = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["status"] for line in logged] == ["would_cancel"] * 2 + ["pending"] * 2
    assert logged[2:] == printed

    cli.emulator.advance_clock(86401)  # Stripe received c-3 more than 24 hours ago
    identifiers.write_text("c-3\n")
    code, result = run_json(capsys, *cancel, "--yes", "--audit", str(audit))
    assert code == 1
    assert result["counts"] == {"refused": 1}
    (refused,) = result["audit"]
    assert refused["identifier"] == "c-3"
    assert "24 hours" in refused["error"]
    assert refused["adjustment_id"] is None
    assert cli.emulator.events(identifier="c-3")[0]["status"] == "counted"
    assert json.loads(audit.read_text().splitlines()[-1])["status"] == "refused"
    assert SECRET_KEY not in audit.read_text()

    code, _, err = run(capsys, "dlq", "cancel", "--identifiers", str(identifiers))
    assert code == 2
    assert "--identifiers needs exactly one --event-name" in err


def test_a_cancel_stripe_keeps_failing_exits_3_and_the_next_run_cancels_it_once(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """503 after the retries: exit 3, the audit says failed. The run continued with --skip of
    that audit cancels it (a failed cancel is not done), and exactly once."""
    forward(cli, [api_event("f-1"), api_event("f-2")], ["f1", "f2"])
    identifiers = tmp_path / "ids.txt"
    identifiers.write_text("f-1\nf-2\n")
    audit = tmp_path / "audit.jsonl"
    cancel = ["dlq", "cancel", "--identifiers", str(identifiers), "--event-name", "api_requests"]
    cli.emulator.set_faults("adjustments", error_rate=1.0, error_statuses=[503])

    code, failed = run_json(capsys, *cancel, "--yes", "--max", "1", "--audit", str(audit))

    assert (code, failed["counts"], failed["complete"]) == (3, {"failed": 1}, False)
    assert cli.emulator.events(identifier="f-1")[0]["status"] == "counted"
    cli.emulator.configure(clear_faults=True)
    code, done = run_json(capsys, *cancel, "--yes", "--skip", str(audit), "--audit", str(audit))
    assert (code, [a["identifier"] for a in done["audit"]]) == (0, ["f-1", "f-2"])
    assert {e["identifier"]: e["status"] for e in cli.emulator.events()} == {
        "f-1": "cancelled",
        "f-2": "cancelled",
    }


def test_cancel_events_of_dlq_messages_chosen_by_filters(
    cli: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    for identifier, customer in (("dq-1", "cus_a"), ("dq-2", "cus_b"), ("dq-old", "cus_o")):
        deliver_sync(cli, api_event(identifier, customer))
    # delivered, yet their messages kept failing until SQS moved them
    put_redriven(cli, api_event("dq-1", "cus_a"))
    put_redriven(cli, api_event("dq-2", "cus_b"))
    # Stripe's answer never came (a 5xx): it counted the event
    put_letter(cli, api_event("dq-old", "cus_o"), "http_503", ago(hours=25))
    # refused before sending: never counted, and another event holds its identifier
    put_letter(cli, api_event("dq-2", "cus_b", value="7"), "duplicate_identifier_in_batch", ago())
    put_letter(cli, api_event("dq-3", "cus_b"), "payload_invalid_value", ago())
    before = snapshot(cli)

    code, result = run_json(capsys, "dlq", "cancel", "--customer", "cus_b", "--dry-run")
    assert code == 0
    assert [(a["identifier"], a["status"]) for a in result["audit"]] == [("dq-2", "would_cancel")]
    assert result["never_sent"] == {"duplicate_identifier_in_batch": 1, "payload_invalid_value": 1}
    assert cli.emulator.requests(endpoint="adjustments") == []
    code, out, _ = run(capsys, "dlq", "cancel", "--code", "payload_invalid_value", "--dry-run")
    assert code == 0
    assert "letters whose events never reached Stripe" in out
    assert "would_cancel" not in out

    by_filters = ["--code", "max_receive_count_exceeded", "--customer", "cus_a"]
    code, result = run_json(capsys, "dlq", "cancel", "--yes", *by_filters)
    assert code == 0
    assert [(a["identifier"], a["status"]) for a in result["audit"]] == [("dq-1", "pending")]
    assert {e["identifier"]: e["status"] for e in cli.emulator.events()} == {
        "dq-1": "cancelled",
        "dq-2": "counted",
        "dq-old": "counted",
    }

    cli.emulator.advance_clock(86401)
    code, out, _ = run(capsys, "dlq", "cancel", "--yes", "--code", "http_503")
    assert code == 1
    (line,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert (line["identifier"], line["status"]) == ("dq-old", "past_cancel_window")
    assert snapshot(cli) == before  # cancelling reads the DLQ, never consumes it


def test_cancel_stopped_by_max_continues_with_its_audit_file_and_cancels_nothing_twice(
    cli: Relay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identifiers = ["mx-1", "mx-2", "mx-3"]
    for identifier in identifiers:
        deliver_sync(cli, api_event(identifier))
        put_redriven(cli, api_event(identifier))
    audit = tmp_path / "audit.jsonl"

    code, result = run_json(capsys, "dlq", "cancel", "--yes", "--max", "2", "--audit", str(audit))
    assert code == 1  # stopped early: more is left
    assert result["complete"] is False  # a third message matched
    assert len(result["audit"]) == 2
    code, _, err = run(
        capsys, "dlq", "cancel", "--yes", "--skip", str(audit), "--audit", str(audit)
    )
    assert code == 0
    assert "stopped early" not in err
    logged = [json.loads(line) for line in audit.read_text().splitlines()]
    assert sorted(line["identifier"] for line in logged) == identifiers  # each once
    assert len(cli.emulator.requests(endpoint="adjustments")) == 3
    assert {e["status"] for e in cli.emulator.events()} == {"cancelled"}

    code, _, err = run(capsys, "dlq", "cancel", "--skip", str(tmp_path / "missing"))
    assert code == 2
    assert "cannot read the identifiers to skip" in err
