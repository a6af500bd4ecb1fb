"""The local Function URL: an HTTP request becomes Lambda's payload format 2.0 event, and the
function's result becomes the HTTP response, as AWS's Function URLs do (a failed invocation
answers 502). The function is reached through a Lambda client; here one that records what it
was asked and answers as the local endpoint would."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import requests

from devkit.function_url import FunctionUrl, request_event, response_parts


class LambdaClient:
    """boto3's lambda.invoke, as far as FunctionUrl uses it: the events it was given, and
    the next answer (a result, or an error document with FunctionError)."""

    def __init__(self, result: Any, *, error: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.result = result
        self.error = error

    def invoke(self, FunctionName: str, Payload: bytes) -> dict[str, Any]:
        assert FunctionName == "ErrorReportsFunction"
        self.events.append(json.loads(Payload))
        answer: dict[str, Any] = {
            "StatusCode": 200,
            "Payload": io.BytesIO(json.dumps(self.result).encode()),
        }
        if self.error:
            answer["FunctionError"] = "Unhandled"
        return answer


def test_a_request_becomes_a_payload_2_0_event() -> None:
    event = request_event(
        "POST",
        "/hooks/stripe?a=1&a=2&b=",
        [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Stripe-Signature", "t=1,v1=ab"),
            ("X-Many", "one"),
            ("X-Many", "two"),
            ("Cookie", "c1=v1; c2=v2"),
        ],
        b'{"id": "evt_1"}',
        "127.0.0.1",
    )
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/hooks/stripe"
    assert event["rawQueryString"] == "a=1&a=2&b="
    assert event["queryStringParameters"] == {"a": "1,2", "b": ""}
    assert event["headers"]["stripe-signature"] == "t=1,v1=ab"  # names in lower case
    assert event["headers"]["x-many"] == "one,two"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["body"] == '{"id": "evt_1"}'  # the bytes as sent: what Stripe signed
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"]["method"] == "POST"
    assert context["http"]["path"] == "/hooks/stripe"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["accountId"] == "anonymous"  # AuthType NONE
    assert context["stage"] == "$default"
    assert isinstance(context["timeEpoch"], int)


def test_a_binary_body_is_base64_encoded_and_no_body_is_left_out() -> None:
    binary = request_event(
        "POST", "/", [("Content-Type", "application/octet-stream")], b"\xff\x00", "h"
    )
    assert binary["isBase64Encoded"] is True
    assert base64.b64decode(binary["body"]) == b"\xff\x00"
    not_utf8 = request_event("POST", "/", [("Content-Type", "text/plain")], b"\xff", "h")
    assert not_utf8["isBase64Encoded"] is True
    empty = request_event("GET", "/", [], b"", "h")
    assert "body" not in empty
    assert "queryStringParameters" not in empty
    assert "cookies" not in empty


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(
            {
                "statusCode": 400,
                "headers": {"Content-Type": "application/json"},
                "body": '{"e": 1}',
            },
            (400, {"content-type": "application/json"}, [], b'{"e": 1}'),
            id="a response",
        ),
        pytest.param(
            {
                "statusCode": 200,
                "body": base64.b64encode(b"\x01").decode(),
                "isBase64Encoded": True,
            },
            (200, {}, [], b"\x01"),
            id="base64",
        ),
        pytest.param(
            {"statusCode": 204, "cookies": ["a=b"]}, (204, {}, ["a=b"], b""), id="no body"
        ),
        pytest.param(
            {"received": True},
            (200, {"content-type": "application/json"}, [], b'{"received": true}'),
            id="no statusCode: the result as JSON",
        ),
    ],
)
def test_the_functions_result_becomes_the_response(result: Any, expected: Any) -> None:
    assert response_parts(result) == expected


def test_over_http_the_function_answers_and_a_failed_invocation_is_a_502() -> None:
    client = LambdaClient({"statusCode": 409, "headers": {"X-Why": "busy"}, "body": "retry"})
    with FunctionUrl(client, "ErrorReportsFunction") as url:
        answered = requests.post(
            url.url,
            data=b'{"id": "evt_1"}',
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        client.result, client.error = {"errorMessage": "boom"}, True
        failed = requests.post(url.url, data=b"{}", timeout=10)
        answers = url.answers()
    assert (answered.status_code, answered.headers["X-Why"], answered.text) == (
        409,
        "busy",
        "retry",
    )
    assert failed.status_code == 502
    assert "boom" not in failed.text  # the error stays in the function's logs
    assert [a.status for a in answers] == [409, 502]
    assert client.events[0]["body"] == '{"id": "evt_1"}'
    assert client.events[0]["requestContext"]["http"]["method"] == "POST"
