"""RefresherFunction through the harness, against moto (SSM, Secrets Manager) and the emulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.harness import Invocation
from meter_relay.refresher import SECRET_PLACEHOLDER
from meter_relay.secret_key import key_fingerprint
from tests.plugins.relay import API_VERSION, ROOT, Relay, emf_metrics

pytestmark = pytest.mark.integration

REFRESHER_SAMPLES = sorted((ROOT / "events").glob("refresher-*.json"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _in(seconds: float) -> str:
    return _iso(datetime.now(UTC) + timedelta(seconds=seconds))


def _session_calls(relay: Relay) -> int:
    return len(relay.emulator.requests(endpoint="session"))


def _stream_accepts(relay: Relay, token: str) -> int:
    response = requests.post(
        f"{relay.emulator_url}/v2/billing/meter_event_stream",
        json={
            "events": [
                {"event_name": "api_requests", "payload": {"stripe_customer_id": "c", "value": "1"}}
            ]
        },
        headers={"Authorization": f"Bearer {token}", "Stripe-Version": API_VERSION},
        timeout=10,
    )
    return response.status_code


def _ok(invocation: Invocation) -> dict[str, Any]:
    assert invocation.error is None, invocation.error
    result: dict[str, Any] = invocation.result
    return result


# ----- the sample events ----------------------------------------------------------------------


@pytest.mark.parametrize("sample", REFRESHER_SAMPLES, ids=lambda path: path.name)
def test_sample_event(relay: Relay, sample: Path) -> None:
    event = json.loads(sample.read_text())
    with relay.refresher() as refresher:
        first = _ok(refresher.invoke(sample))
        stored = relay.stored_session()
        assert first["refreshed"] is True
        assert first["reason"] == "no stored session"
        assert stored is not None
        assert stored["session_id"] == first["session_id"]
        assert stored["expires_at"] == first["expires_at"]
        again = _ok(refresher.invoke(sample))  # the same sample on a live session
    if event.get("force"):
        assert again["refreshed"] is True
        assert again["reason"] == "forced"
        assert again["session_id"] != first["session_id"]
    else:
        assert again["refreshed"] is False
        assert again["reason"] == "still valid"
        assert again["session_id"] == first["session_id"]
    latest = relay.stored_session()
    assert latest is not None
    assert latest["session_id"] == again["session_id"]
    assert _stream_accepts(relay, latest["token"]) == 200


# ----- creating and keeping the session -------------------------------------------------------


def test_first_run_creates_the_secure_string_parameter(relay: Relay) -> None:
    assert relay.stored_session() is None
    with relay.refresher() as refresher:
        result = _ok(refresher.invoke({}))

    ssm = relay.aws.client("ssm")
    parameter = ssm.get_parameter(Name=relay.parameter, WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString"
    value = json.loads(parameter["Value"])
    assert set(value) == {"token", "session_id", "expires_at", "livemode", "key_fingerprint"}
    assert value["key_fingerprint"] == key_fingerprint(relay.secret_key)
    assert value["livemode"] is False  # the emulator's key is a test-mode key
    assert value["session_id"] == result["session_id"]
    assert value["session_id"].startswith("mtres_")
    assert value["token"]
    expires_at = datetime.fromisoformat(value["expires_at"])
    assert timedelta(minutes=14) < expires_at - datetime.now(UTC) <= timedelta(minutes=15)
    # the stored token is one the stream accepts
    assert _stream_accepts(relay, value["token"]) == 200
    # without decryption, moto shows the KMS-wrapped form: the value really is encrypted
    raw = ssm.get_parameter(Name=relay.parameter)["Parameter"]["Value"]
    assert raw != parameter["Value"]


def test_valid_session_beyond_the_margin_is_left_alone(relay: Relay) -> None:
    stored = relay.put_session(expires_at=_in(600))  # margin is 420 s by default
    calls = _session_calls(relay)
    with relay.refresher() as refresher:
        result = _ok(refresher.invoke({}))
    assert result["refreshed"] is False
    assert result["reason"] == "still valid"
    assert result["session_id"] == stored["session_id"]
    assert relay.stored_session() == stored
    assert _session_calls(relay) == calls


def test_session_within_the_margin_is_renewed(relay: Relay) -> None:
    stored = relay.put_session(expires_at=_in(300))
    with relay.refresher() as refresher:
        result = _ok(refresher.invoke({}))
    assert result["refreshed"] is True
    assert result["reason"].startswith("expires within")
    assert result["session_id"] != stored["session_id"]
    latest = relay.stored_session()
    assert latest is not None
    assert latest["session_id"] == result["session_id"]


def test_unreadable_parameter_is_replaced(relay: Relay) -> None:
    relay.aws.client("ssm").put_parameter(
        Name=relay.parameter, Value="not the refresher's JSON", Type="SecureString"
    )
    with relay.refresher() as refresher:
        result = _ok(refresher.invoke({}))
    assert result["refreshed"] is True
    assert result["reason"] == "the stored value is unreadable"
    latest = relay.stored_session()
    assert latest is not None
    assert latest["session_id"] == result["session_id"]


def test_force_refreshes_a_valid_session(relay: Relay) -> None:
    stored = relay.put_session()
    with relay.refresher() as refresher:
        result = _ok(refresher.invoke({"force": True}))
    assert result["refreshed"] is True
    assert result["reason"] == "forced"
    assert result["session_id"] != stored["session_id"]


def test_replace_session_id_refreshes_only_the_current_session(relay: Relay) -> None:
    stored = relay.put_session()
    with relay.refresher() as refresher:
        stale = _ok(refresher.invoke({"replace_session_id": "mtres_someone_elses_old_one"}))
        assert stale["refreshed"] is False
        assert stale["session_id"] == stored["session_id"]

        current = _ok(refresher.invoke({"replace_session_id": stored["session_id"]}))
        assert current["refreshed"] is True
        assert current["reason"] == "the forwarder reported it expired"
        assert current["session_id"] != stored["session_id"]

        # a second forwarder reporting the session that was just replaced changes nothing
        late = _ok(refresher.invoke({"replace_session_id": stored["session_id"]}))
        assert late["refreshed"] is False
        assert late["session_id"] == current["session_id"]


# ----- a new key ------------------------------------------------------------------------------

NEW_KEY = "sk_test_" + "n3w" * 30  # what an operator rotating the key puts in the secret


def _rotate_key(relay: Relay) -> None:
    relay.aws.client("secretsmanager").put_secret_value(
        SecretId=relay.secret_id, SecretString=NEW_KEY
    )
    relay.emulator.configure(accepted_keys=[NEW_KEY])  # the old key is revoked


def test_a_forced_run_uses_the_key_just_put_in_the_secret(relay: Relay) -> None:
    """The documented rotation: put the new key, then a forced run. The key was cached for
    five minutes, so the forced run made its session with the old key (another account's,
    perhaps) or failed on it."""
    with relay.refresher() as refresher:
        first = _ok(refresher.invoke({}))  # reads, and caches, the old key
        _rotate_key(relay)
        forced = _ok(refresher.invoke({"force": True}))
    assert forced["refreshed"] is True
    assert forced["session_id"] != first["session_id"]
    stored = relay.stored_session()
    assert stored is not None
    assert stored["key_fingerprint"] == key_fingerprint(NEW_KEY)
    assert _stream_accepts(relay, stored["token"]) == 200


def test_a_failed_run_reads_the_secret_again_on_the_next(relay: Relay) -> None:
    """A key Stripe refuses is not kept cached for five minutes after the operator mends it."""
    relay.put_session(expires_at=_in(100))
    relay.emulator.configure(accepted_keys=[NEW_KEY])
    with relay.refresher() as refresher:
        assert refresher.invoke({}).error is not None  # the old key, refused
        relay.aws.client("secretsmanager").put_secret_value(
            SecretId=relay.secret_id, SecretString=NEW_KEY
        )
        mended = _ok(refresher.invoke({}))
    assert mended["refreshed"] is True


def test_a_session_made_with_another_key_is_replaced_on_a_scheduled_run(relay: Relay) -> None:
    """A rotated key, or a stack re-created under the same name with another account's key,
    finds the parameter holding a live session of the old key: it is not kept to expiry."""
    stored = relay.put_session()  # made with the old key, and says so
    _rotate_key(relay)
    with relay.refresher() as refresher:  # a new environment: the secret is read afresh
        result = _ok(refresher.invoke({}))
    assert result["refreshed"] is True
    assert result["reason"] == "it was made with another key"
    assert result["session_id"] != stored["session_id"]
    latest = relay.stored_session()
    assert latest is not None
    assert latest["key_fingerprint"] == key_fingerprint(NEW_KEY)


def test_an_environment_still_caching_the_old_key_does_not_undo_a_rotation(
    relay: Relay,
) -> None:
    """Two warm refresher environments: one is forced after the rotation and makes the new
    key's session; the other, its cache still holding the old key, must not replace that
    session with one of the old key (another account's, perhaps) on its next run."""
    relay.emulator.configure(accepted_keys=[relay.secret_key, NEW_KEY])  # both still valid
    with relay.refresher() as behind, relay.refresher() as forced:
        _ok(behind.invoke({}))  # reads, and caches, the old key
        _ok(forced.invoke({}))
        relay.aws.client("secretsmanager").put_secret_value(
            SecretId=relay.secret_id, SecretString=NEW_KEY
        )
        rotated = _ok(forced.invoke({"force": True}))
        scheduled = _ok(behind.invoke({}))
    assert scheduled["refreshed"] is False
    assert scheduled["session_id"] == rotated["session_id"]
    stored = relay.stored_session()
    assert stored is not None
    assert stored["key_fingerprint"] == key_fingerprint(NEW_KEY)


def test_a_session_stored_without_its_key_is_replaced_once(relay: Relay) -> None:
    """Written before sessions recorded their key: replaced once, then kept."""
    stored = relay.put_session()
    ssm = relay.aws.client("ssm")
    value = {k: v for k, v in stored.items() if k != "key_fingerprint"}
    ssm.put_parameter(
        Name=relay.parameter, Value=json.dumps(value), Type="SecureString", Overwrite=True
    )
    with relay.refresher() as refresher:
        first = _ok(refresher.invoke({}))
        again = _ok(refresher.invoke({}))
    assert first["refreshed"] is True
    assert first["reason"] == "the key that made it is not recorded"
    assert again["refreshed"] is False


def test_the_forwarders_call_renews_the_session_without_reading_the_catalog(
    relay: Relay,
) -> None:
    """The forwarder waits for this answer: the meter catalog's pages would only lengthen the
    wait (its own call, {"refresh_catalog": true}, and the schedule keep the catalog)."""
    stored = relay.put_session()
    before = len(relay.emulator.requests(endpoint="meters"))
    with relay.refresher() as refresher:
        result = _ok(
            refresher.invoke({"session_only": True, "replace_session_id": stored["session_id"]})
        )
        after_forwarders = len(relay.emulator.requests(endpoint="meters"))
        scheduled = _ok(refresher.invoke({}))
    assert result["refreshed"] is True
    assert "catalog" not in result
    assert after_forwarders == before
    assert scheduled["catalog"]["enabled"] is True
    assert len(relay.emulator.requests(endpoint="meters")) > before  # the scheduled run's


# ----- secrets stay secret --------------------------------------------------------------------


def test_summary_and_logs_hold_neither_token_nor_secret_key(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.put_session(expires_at=_in(100))
    with relay.refresher() as refresher:
        results = [
            _ok(refresher.invoke({})),
            _ok(refresher.invoke({"force": True})),
            _ok(refresher.invoke({})),
        ]
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    stored = relay.stored_session()
    assert stored is not None
    tokens = {stored["token"]}
    for result in results:
        assert set(result) == {
            "refreshed",
            "reason",
            "session_id",
            "expires_at",
            "seconds_left",
            "catalog",
        }
    summaries = json.dumps(results)
    assert "session checked" in logs  # the logs were captured, so their absence means something
    for secret in (*tokens, relay.secret_key):
        assert secret not in summaries
        assert secret not in logs
    assert "sk_test_" not in logs


def test_stripe_failure_is_an_error_naming_no_secret(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.emulator.set_faults("session", error_rate=1.0)
    with relay.refresher() as refresher:
        invocation = refresher.invoke({})
    captured = capfd.readouterr()
    assert invocation.error is not None
    assert invocation.error["errorType"] == "RefreshError"
    message = invocation.error["errorMessage"]
    assert "Stripe refused a new meter event session" in message
    assert relay.secret_key not in message
    assert "sk_test_" not in message
    assert relay.secret_key not in captured.out + captured.err
    assert emf_metrics(captured.out).get("RefreshFailures") == [1.0]
    assert relay.stored_session() is None  # nothing half-written


def test_rejected_secret_key_error_shows_no_more_than_stripe_masks(
    relay: Relay, capfd: pytest.CaptureFixture[str]
) -> None:
    relay.emulator.configure(accepted_keys=["sk_test_only_this_one_is_valid"])
    with relay.refresher() as refresher:
        invocation = refresher.invoke({"force": True})
    captured = capfd.readouterr()
    assert invocation.error is not None
    assert "api_key_invalid" in invocation.error["errorMessage"]
    for text in (json.dumps(invocation.error), captured.out, captured.err):
        assert relay.secret_key not in text
    assert emf_metrics(captured.out).get("RefreshFailures") == [1.0]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("placeholder", "holds no Stripe key yet"),
        ("empty", "holds no Stripe key yet"),
        ("no value", "has no value"),
        ("missing", "does not exist"),
        ("not a key", "does not hold a Stripe key"),
    ],
)
def test_secret_not_set_is_a_clear_error(
    relay: Relay, capfd: pytest.CaptureFixture[str], case: str, expected: str
) -> None:
    secrets = relay.aws.client("secretsmanager")
    if case == "placeholder":
        secrets.put_secret_value(SecretId=relay.secret_id, SecretString=SECRET_PLACEHOLDER)
    elif case == "empty":
        secrets.put_secret_value(SecretId=relay.secret_id, SecretString="  ")
    elif case == "no value":  # what the template creates: a secret without a version
        secrets.delete_secret(SecretId=relay.secret_id, ForceDeleteWithoutRecovery=True)
        secrets.create_secret(Name=relay.secret_id)
    elif case == "missing":
        secrets.delete_secret(SecretId=relay.secret_id, ForceDeleteWithoutRecovery=True)
    else:
        secrets.put_secret_value(SecretId=relay.secret_id, SecretString="hunter2-not-a-key")
    with relay.refresher() as refresher:
        invocation = refresher.invoke({})
    captured = capfd.readouterr()
    assert invocation.error is not None
    assert invocation.error["errorType"] == "RefreshError"
    message = invocation.error["errorMessage"]
    assert expected in message
    assert relay.secret_id in message
    assert "hunter2" not in message + captured.out + captured.err
    assert emf_metrics(captured.out).get("RefreshFailures") == [1.0]
    assert _session_calls(relay) == 0
    assert relay.stored_session() is None


# ----- as the forwarder calls it: through the local Lambda endpoint -----------------------------


def test_refresher_through_the_local_lambda_endpoint(relay: Relay) -> None:
    client = relay.lambda_client()
    response = client.invoke(
        FunctionName="RefresherFunction",
        InvocationType="RequestResponse",
        Payload=json.dumps({}).encode(),
    )
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    created = json.loads(response["Payload"].read())
    assert created["refreshed"] is True
    stored = relay.stored_session()
    assert stored is not None
    assert stored["session_id"] == created["session_id"]

    arn = "arn:aws:lambda:us-east-1:123456789012:function:local-RefresherFunction:$LATEST"
    response = client.invoke(
        FunctionName=arn, Payload=json.dumps({"replace_session_id": created["session_id"]})
    )
    replaced = json.loads(response["Payload"].read())
    assert replaced["refreshed"] is True
    assert replaced["session_id"] != created["session_id"]

    relay.emulator.set_faults("session", error_rate=1.0)
    response = client.invoke(FunctionName="RefresherFunction", Payload=b'{"force": true}')
    assert response["StatusCode"] == 200
    assert response.get("FunctionError") == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert error["errorType"] == "RefreshError"
    assert relay.secret_key not in json.dumps(error)

    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="NoSuchFunction", Payload=b"{}")
