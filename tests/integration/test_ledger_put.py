"""The ledger's PUT (ledger.LedgerWriter): presigned by the S3 client and sent through urllib3,
with exactly the headers it signed; a presigned PUT S3 refuses is made again by PutObject, and
the writer keeps to PutObject from then on. Against moto's S3 over real HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3

from meter_relay.forwarder import ledger_s3_config
from meter_relay.ledger import CONTENT_TYPE, LedgerWriter, decompress, object_key
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

BUCKET = "ledger-put"
AT = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
TEXT = b'{"delivered_at":"2026-12-07T11:30:00Z","events":[]}\n' * 500


class SentRequests(urllib3.PoolManager):
    """urllib3's pool, keeping what each request sent."""

    def __init__(self) -> None:
        super().__init__(maxsize=1)
        self.sent: list[tuple[str, str, dict[str, str]]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((method, url, dict(kwargs.get("headers") or {})))
        return super().request(method, url, *args, **kwargs)


def write(writer: LedgerWriter, request_id: str) -> str:
    future = writer.start(TEXT, AT, request_id, lambda: 10.0)
    assert future is not None
    future.result(timeout=30)
    return object_key(writer.prefix, AT, request_id)


PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


@pytest.fixture
def s3(aws: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in PROXY_VARIABLES:  # a developer's proxy would turn presigning off
        monkeypatch.delenv(name, raising=False)
    client = aws.client("s3", ledger_s3_config())
    client.create_bucket(Bucket=BUCKET)
    return client


def test_the_put_is_presigned_and_sends_exactly_what_it_signed(s3: Any) -> None:
    """S3 refuses a presigned request whose signed headers it does not get as signed: the
    content type and the body's CRC32, which S3 checks the object against."""
    http = SentRequests()
    writer = LedgerWriter(BUCKET, "", s3, http=http)

    key = write(writer, "req-1")

    ((method, url, headers),) = http.sent
    query = parse_qs(urlsplit(url).query)
    assert method == "PUT"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed = set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert signed == {"host"} | {name.lower() for name in headers}
    assert headers["Content-Type"] == CONTENT_TYPE
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert decompress(stored["Body"].read()) == TEXT
    assert stored["ContentType"] == CONTENT_TYPE
    assert writer.presigned


class _Refusing(BaseHTTPRequestHandler):
    """A proxy that answers every request as S3 refusing it."""

    def do_PUT(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def refusing() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.requests = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_refused_presigned_put_is_made_by_put_object_and_the_writer_keeps_to_it(
    s3: Any, refusing: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = refusing.server_address[1]
    writer = LedgerWriter(BUCKET, "p", s3, http=urllib3.ProxyManager(f"http://127.0.0.1:{port}"))

    first = write(writer, "req-1")

    assert refusing.requests == 1  # type: ignore[attr-defined]
    assert decompress(s3.get_object(Bucket=BUCKET, Key=first)["Body"].read()) == TEXT
    assert not writer.presigned
    (warning,) = [r for r in caplog.records if "presigned PUT failed" in r.getMessage()]
    assert warning.why == "PresignedPutRefused: 403 AccessDenied"  # type: ignore[attr-defined]

    second = write(writer, "req-2")
    assert refusing.requests == 1  # type: ignore[attr-defined]
    assert decompress(s3.get_object(Bucket=BUCKET, Key=second)["Body"].read()) == TEXT


class _DroppingFirst(BaseHTTPRequestHandler):
    """A proxy that drops the first request's connection unanswered, as S3 does with a kept
    connection it closed, and answers the next as S3 taking the object."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server.bodies.append(body)
        if len(server.bodies) == 1:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_a_dropped_connection_is_tried_again_once_still_presigned(s3: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DroppingFirst)
    server.bodies = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        writer = LedgerWriter(BUCKET, "", s3, http=urllib3.ProxyManager(f"http://127.0.0.1:{port}"))
        write(writer, "req-1")
    finally:
        server.shutdown()
        server.server_close()

    first, second = server.bodies  # type: ignore[attr-defined]
    assert first == second
    assert decompress(second) == TEXT
    assert writer.presigned


def test_presigned_urls_are_sigv4_and_regional_on_aws() -> None:
    """botocore's defaults would presign with SigV2, for S3's global endpoint."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="eu-west-1"
    )
    s3 = session.client("s3", config=ledger_s3_config({}))
    url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "my-ledger", "Key": "events/k"}, ExpiresIn=60
    )
    assert url.startswith("https://my-ledger.s3.eu-west-1.amazonaws.com/events/k?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url


def test_a_custom_endpoint_keeps_botocores_addressing() -> None:
    """moto on 127.0.0.1, a local stack on localhost: no bucket name prefixed to their host."""
    custom: Any = ledger_s3_config({"AWS_ENDPOINT_URL": "http://localhost:4566"})
    assert custom.s3 == {"payload_signing_enabled": False, "addressing_style": "auto"}
    assert custom.signature_version == "s3v4"
    on_aws: Any = ledger_s3_config({})
    assert on_aws.s3 == {"payload_signing_enabled": False, "addressing_style": "virtual"}


def test_with_a_proxy_configured_every_put_is_put_object(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore sends through a proxy set in the environment; the presigned PUT would not."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    http = SentRequests()
    writer = LedgerWriter(BUCKET, "", s3, http=http)
    monkeypatch.delenv("HTTPS_PROXY")  # moto is not behind it

    key = write(writer, "req-1")

    assert not writer.presigned
    assert http.sent == []
    assert decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == TEXT
