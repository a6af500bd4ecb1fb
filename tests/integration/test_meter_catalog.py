"""The meter catalog: the refresher reads the account's meters, the forwarder refuses events
Stripe would drop for their meter (no_meter, archived_meter) before sending them, and a meter
created a minute ago is not refused: the catalog is read again, at most once, first.

Against moto (SSM, SQS), the emulator's meters, and the functions through the harness (the
refresher reached through the local Lambda endpoint when the forwarder asks for it).
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meter_relay.catalog import PART_CHARS, CatalogStore, Meter, MeterCatalog
from tests.integration.dlq_helpers import cli as cli  # the fixture
from tests.integration.dlq_helpers import peek, run_json, take_usage_queue
from tests.integration.test_forwarder import counted, dead_letters, event, failures
from tests.integration.test_ledger_write import ledger_objects
from tests.plugins.aws import AwsEnv
from tests.plugins.relay import CATALOG_PATH, Relay, emf_sums

pytestmark = pytest.mark.integration


def catalog_of(count: int, seed: int = 1) -> MeterCatalog:
    rng = random.Random(seed)
    return MeterCatalog(
        {
            f"feature_{i:05d}_{rng.getrandbits(32):x}": Meter(
                f"mtr_{rng.getrandbits(64):x}",
                rng.random() < 0.8,
                rng.choice(["stripe_customer_id", "customer", "account"]),
                rng.choice(["value", "calls", "tokens"]),
            )
            for i in range(count)
        }
    )


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(count=st.sampled_from([0, 1, 40, 400, 3000]), seed=st.integers(0, 1000))
def test_property_the_stored_catalog_reads_back_whole_in_parts_ssm_takes(
    aws: AwsEnv, count: int, seed: int
) -> None:
    """Parts left by an earlier example (a bigger or smaller catalog) must not mix in."""
    ssm = aws.client("ssm")
    store = CatalogStore(CATALOG_PATH, ssm)
    catalog = catalog_of(count, seed)
    store.write(catalog)
    assert store.read() == catalog
    values = [
        p["Value"]
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=CATALOG_PATH)
        for p in page["Parameters"]
    ]
    assert all(len(value) <= PART_CHARS for value in values)
    # a smaller catalog leaves no part of the bigger one behind
    store.write(catalog_of(1, seed))
    assert store.read() == catalog_of(1, seed)


def test_an_unchanged_catalog_is_not_written_again(aws: AwsEnv) -> None:
    store = CatalogStore(CATALOG_PATH, aws.client("ssm"))
    assert store.write(catalog_of(50)) is True
    assert store.write(catalog_of(50)) is False
    assert store.write(catalog_of(51)) is True


def test_parts_of_two_versions_are_never_read_as_one(aws: AwsEnv) -> None:
    ssm = aws.client("ssm")
    store = CatalogStore(CATALOG_PATH, ssm)
    store.write(catalog_of(3000, seed=1))
    first_part = ssm.get_parameter(Name=f"{CATALOG_PATH}/0")["Parameter"]["Value"]
    store.write(catalog_of(3000, seed=2))
    ssm.put_parameter(Name=f"{CATALOG_PATH}/0", Value=first_part, Type="String", Overwrite=True)
    assert store.read() is None  # a reader between two writes: no catalog, never a wrong one


def test_the_refresher_stores_every_meter_active_or_not(relay: Relay) -> None:
    with relay.refresher() as refresher:
        result = refresher.invoke({}).raise_for_error()
    assert result["catalog"] == {"enabled": True, "meters": 4, "written": True}
    catalog = CatalogStore(CATALOG_PATH, relay.aws.client("ssm")).read()
    assert catalog is not None
    assert catalog.get("search_calls") == Meter("mtr_test_search_calls", True, "customer", "calls")
    assert catalog.get("legacy_metric") == Meter(
        "mtr_test_legacy", False, "stripe_customer_id", "value"
    )
    assert catalog.get("logins") is not None


def test_the_refresher_reads_every_page_of_meters(relay: Relay) -> None:
    for n in range(230):  # with the fixture's 4: three pages of Stripe's at most 100
        relay.emulator.create_meter(f"paged_{n:03d}")
    with relay.refresher() as refresher:
        result = refresher.invoke({}).raise_for_error()
    assert result["catalog"]["meters"] == 234
    catalog = CatalogStore(CATALOG_PATH, relay.aws.client("ssm")).read()
    assert catalog is not None
    assert {f"paged_{n:03d}" for n in range(230)} <= set(catalog.meters)
    assert catalog.get("search_calls") is not None


def test_meters_stripe_cannot_list_never_fail_the_session(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.emulator.set_faults("meters", error_rate=1.0, error_statuses=[500])
    with relay.refresher() as refresher:
        result = refresher.invoke({}).raise_for_error()
    assert result["refreshed"] is True  # the session is renewed all the same
    assert "error" in result["catalog"]
    assert emf_sums(capfd.readouterr().out)["MeterCatalogFailures"] == 1


def _store_catalog(relay: Relay) -> None:
    with relay.refresher() as refresher:
        refresher.invoke({}).raise_for_error()


def test_events_stripe_would_drop_for_their_meter_are_dead_lettered_before_sending(
    relay: Relay,
) -> None:
    _store_catalog(relay)
    nobody = event("no-meter-1")
    nobody["event_name"] = "nobody_meters_this"
    archived = event("archived-1")
    archived["event_name"] = "legacy_metric"
    search = {
        "event_name": "search_calls",
        "identifier": "search-1",
        "payload": {"customer": "cus_a", "calls": "3"},  # the meter's own keys, no METER_KEYS
    }
    sqs_event = relay.sqs_event(
        [nobody, archived, search, event("fine-1")], ["m-nobody", "m-archived", "m-search", "m-ok"]
    )
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()

    assert counted(relay) == {"search-1": 1, "fine-1": 1}
    letters = dead_letters(relay)
    assert {key: m["attributes"]["ErrorCode"] for key, m in letters.items()} == {
        ("m-nobody", "no-meter-1"): "no_meter",
        ("m-archived", "archived-1"): "archived_meter",
    }
    assert relay.emulator.errors()["total"] == 0  # nothing left for Stripe to drop later


def test_a_meter_created_a_minute_ago_is_not_refused(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    _store_catalog(relay)
    relay.emulator.create_meter("brand_new_feature")  # after the catalog was stored
    fresh = event("fresh-1")
    fresh["event_name"] = "brand_new_feature"
    typo = event("typo-1")
    typo["event_name"] = "api_requets"
    sqs_event = relay.sqs_event([fresh, typo, event("plain-1")], ["m-fresh", "m-typo", "m-ok"])
    with relay.forwarder(refresher=True) as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
        first = emf_sums(capfd.readouterr().out)
        # the next batch with another unknown name: no second refresh within the interval
        again = relay.sqs_event([{**typo, "identifier": "typo-2"}], ["m-typo-2"])
        assert failures(forwarder.invoke(again), again) == set()
        second = emf_sums(capfd.readouterr().out)

    assert counted(relay) == {"fresh-1": 1, "plain-1": 1}
    codes = {key: m["attributes"]["ErrorCode"] for key, m in dead_letters(relay).items()}
    assert codes == {("m-typo", "typo-1"): "no_meter", ("m-typo-2", "typo-2"): "no_meter"}
    assert first["MeterCatalogRefreshes"] == 1
    assert second["MeterCatalogRefreshes"] == 0


def test_a_meter_created_a_minute_ago_is_recorded_with_its_own_payload_keys(
    relay: Relay,
) -> None:
    """The batch that read the catalog again is recorded by the meters it was judged by: the
    ledger finds the customer and the value where the new meter keeps them."""
    _store_catalog(relay)
    relay.emulator.create_meter("tokens_used", customer_key="account", value_key="tokens")
    fresh = {
        "event_name": "tokens_used",
        "identifier": "tok-1",
        "payload": {"account": "cus_t", "tokens": "9"},
    }
    sqs_event = relay.sqs_event([fresh, event("plain-1")], ["m-tok", "m-ok"])
    with relay.forwarder(refresher=True) as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()

    assert counted(relay) == {"tok-1": 1, "plain-1": 1}
    lines = {line.identifier: line for lines in ledger_objects(relay).values() for line in lines}
    recorded = lines["tok-1"]
    assert (recorded.customer_key, recorded.value_key) == ("account", "tokens")
    assert (recorded.customer, recorded.value) == ("cus_t", "9")
    assert lines["plain-1"].customer_key == "stripe_customer_id"


def test_a_no_meter_letter_is_replayed_once_the_meter_exists(relay: Relay) -> None:
    _store_catalog(relay)
    late = event("late-meter-1")
    late["event_name"] = "created_later"
    sqs_event = relay.sqs_event([late], ["m-late"])
    with relay.forwarder() as forwarder:
        forwarder.invoke(sqs_event)
    (letter,) = relay.dlq_messages()
    assert letter["attributes"]["ErrorCode"] == "no_meter"

    relay.emulator.create_meter("created_later")
    _store_catalog(relay)
    replayed = relay.sqs_event([letter["body"]], ["m-replayed"])  # what `dlq replay` sends
    with relay.forwarder() as forwarder:
        assert failures(forwarder.invoke(replayed), replayed) == set()
    assert counted(relay) == {"late-meter-1": 1}


def test_dlq_replay_judges_a_letter_by_its_meters_own_keys_once_the_meter_exists(
    cli: Relay, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command once the meter exists, with payload keys only the meter knows: METER_KEYS
    names none of them, so the replay must read them from the catalog as the forwarder does."""
    monkeypatch.setenv("METER_KEYS", "{}")
    monkeypatch.setenv("METER_CATALOG_PATH", CATALOG_PATH)
    _store_catalog(cli)
    late = {
        "event_name": "created_later",
        "identifier": "late-keys-1",
        "payload": {"account": "cus_late", "calls": "4"},
    }
    sqs_event = cli.sqs_event([late], ["m-late-keys"])
    with cli.forwarder(env={"METER_KEYS": "{}"}) as forwarder:
        forwarder.invoke(sqs_event)
    (letter,) = peek(cli).values()
    assert letter["MessageAttributes"]["ErrorCode"]["StringValue"] == "no_meter"

    cli.emulator.create_meter("created_later", customer_key="account", value_key="calls")
    _store_catalog(cli)
    code, result = run_json(capsys, "dlq", "replay")
    assert (code, result["counts"]) == (0, {"replayed": 1})

    (replayed,) = take_usage_queue(cli)
    with cli.forwarder(env={"METER_KEYS": "{}"}) as forwarder:
        again = cli.sqs_event([replayed["Body"]], [replayed["MessageId"]])
        assert failures(forwarder.invoke(again), again) == set()
    assert counted(cli) == {"late-keys-1": 1}
    assert cli.emulator.errors()["total"] == 0


def test_meter_keys_still_override_the_meters_own(relay: Relay) -> None:
    _store_catalog(relay)
    overridden = {
        "event_name": "search_calls",
        "identifier": "override-1",
        "payload": {"account": "cus_a", "n": "2"},
    }
    sqs_event = relay.sqs_event([overridden])
    keys = json.dumps({"search_calls": {"customer_key": "account", "value_key": "n"}})
    with relay.forwarder(env={"METER_KEYS": keys}) as forwarder:
        assert failures(forwarder.invoke(sqs_event), sqs_event) == set()
    assert relay.dlq_messages() == []
