"""The ledger's PUT (ledger.LedgerWriter): signed by botocore's SigV4 signer for S3 and sent
through urllib3 to the object's URL as PutObject addresses it, with exactly the headers it
signed; a signed PUT S3 refuses is made again by PutObject, and the writer keeps to PutObject
from then on. Against moto's S3 over real HTTP, and a local server that checks the signature as
S3 does (moto does not)."""

from __future__ import annotations

import base64
import socket
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
import urllib3
from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HAS_CRT
from botocore.credentials import Credentials

from meter_relay.forwarder import ledger_s3_config
from meter_relay.ledger import CONTENT_TYPE, LedgerWriter, decompress, object_key
from tests.plugins.aws import AwsEnv

pytestmark = pytest.mark.integration

BUCKET = "ledger-put"
AT = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
TEXT = b'{"delivered_at":"2026-12-07T11:30:00Z","events":[]}\n' * 500
SECRET = Credentials("AKIDLEDGER", "ledger-secret", "a-session-token/with+odd=chars")


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


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:  # a developer's proxy would turn the signed PUT off
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(aws: AwsEnv) -> Any:
    client = aws.client("s3", ledger_s3_config())
    client.create_bucket(Bucket=BUCKET)
    return client


def credentials(aws: AwsEnv) -> Credentials:
    env = aws.env
    return Credentials(
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env["AWS_SESSION_TOKEN"]
    )


def test_the_signed_put_stores_the_object_with_its_type(aws: AwsEnv, s3: Any) -> None:
    http = SentRequests()
    writer = LedgerWriter(BUCKET, "", s3, credentials(aws), http=http)

    key = write(writer, "req-1")

    ((method, url, _),) = http.sent  # through urllib3, not PutObject
    assert (method, url) == ("PUT", writer.object_url(key))
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    assert decompress(stored["Body"].read()) == TEXT
    assert stored["ContentType"] == CONTENT_TYPE
    assert writer.signed


class _CheckingSignatures(BaseHTTPRequestHandler):
    """S3's side of a PUT, as far as the signature goes: the request as it came over the wire
    (path, headers, body) is signed again with the secret key, by botocore's pure-Python SigV4
    signer for S3 (its canonical request and string to sign, not its add_auth), and must match
    the Authorization header; the body must match its signed CRC32. Answers 200 or 403
    SignatureDoesNotMatch."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        server: Any = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        server.received.append((self.path, self.headers, body))  # any case
        ok = (
            _signature_matches(self.path, self.headers, server.secret)
            and self.headers.get("x-amz-checksum-crc32")
            == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        )
        answer = b"" if ok else b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: Any) -> None:
        pass


def _signature_matches(path: str, headers: Any, secret: Credentials) -> bool:
    authorization = headers.get("Authorization", "")
    fields = dict(part.strip().split("=", 1) for part in authorization.split(" ", 1)[-1].split(","))
    signed = fields["SignedHeaders"].split(";")
    if "host" not in signed or "x-amz-content-sha256" not in signed:
        return False
    request = AWSRequest(
        "PUT",
        f"http://{headers['Host']}{path}",
        headers={name: headers[name] for name in signed if name != "host"},
    )
    request.context["timestamp"] = headers["X-Amz-Date"]
    signer = S3SigV4Auth(secret, "s3", "us-east-1")
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    return bool(fields["Signature"] == expected)


@pytest.fixture
def checking() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CheckingSignatures)
    server.received = []  # type: ignore[attr-defined]
    server.secret = SECRET  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def s3_at(endpoint: str, secret: Credentials = SECRET) -> Any:
    session = boto3.session.Session(
        aws_access_key_id=secret.access_key,
        aws_secret_access_key=secret.secret_key,
        aws_session_token=secret.token,
        region_name="us-east-1",
    )
    return session.client("s3", endpoint_url=endpoint, config=ledger_s3_config({}))


def _signers() -> list[Any]:
    """botocore's pure-Python signer (the Lambda layer's: it ships no awscrt), and CRT's where
    installed (this project's virtual environment has it, through the SAM CLI)."""
    signers: list[Any] = [pytest.param(S3SigV4Auth, id="python")]
    if HAS_CRT:
        from botocore.crt.auth import CrtS3SigV4Auth

        signers.append(pytest.param(CrtS3SigV4Auth, id="crt"))
    return signers


@pytest.mark.parametrize("signer", _signers())
@pytest.mark.parametrize("prefix", ["", "team a/ledger=prod", "ünïcode~prefix"])
def test_the_put_sends_exactly_what_it_signed(
    checking: ThreadingHTTPServer, prefix: str, signer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 signs the request it receives again and refuses a mismatch: what urllib3 sent (the
    path as encoded, the headers) is what botocore's signer signed, with the session token, the
    content type and the body's CRC32 among the signed headers. With either signer botocore
    may choose."""
    monkeypatch.setitem(AUTH_TYPE_MAPS, "s3v4", signer)
    endpoint = f"http://127.0.0.1:{checking.server_address[1]}"
    writer = LedgerWriter(BUCKET, prefix, s3_at(endpoint), SECRET)

    key = write(writer, "req-1")

    ((path, headers, body),) = checking.received  # type: ignore[attr-defined]
    assert writer.signed  # answered 200: the signature and the checksum matched
    assert f"http://127.0.0.1:{checking.server_address[1]}{path}" == writer.object_url(key)
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["X-Amz-Security-Token"] == SECRET.token
    assert headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-type", "x-amz-checksum-crc32", "x-amz-security-token"} <= set(signed)
    assert decompress(body) == TEXT


def test_a_put_signed_with_another_key_is_refused_and_made_by_put_object(
    checking: ThreadingHTTPServer,
) -> None:
    """The check above can fail: a writer whose credentials are not the secret S3 knows is
    refused (and falls back to PutObject, refused the same way here: a ledger gap)."""
    endpoint = f"http://127.0.0.1:{checking.server_address[1]}"
    wrong = Credentials("AKIDLEDGER", "another-secret", SECRET.token)
    writer = LedgerWriter(BUCKET, "", s3_at(endpoint, wrong), wrong, sleep=lambda _: None)

    future = writer.start(TEXT, AT, "req-1", lambda: 10.0)
    assert future is not None
    with pytest.raises(Exception, match="was not written"):
        future.result(timeout=30)
    assert not writer.signed
    # the signed PUT once, then PutObject (botocore's, its retries): each refused the same way
    received: list[tuple[str, Any, bytes]] = checking.received  # type: ignore[attr-defined]
    agents = [headers.get("User-Agent", "") for _, headers, _ in received]
    assert agents[0].startswith("python-urllib3/")
    assert len(agents) > 1
    assert all(a.startswith("Boto3/") for a in agents[1:])


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


def test_a_refused_signed_put_is_made_by_put_object_and_the_writer_keeps_to_it(
    aws: AwsEnv, s3: Any, refusing: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    port = refusing.server_address[1]
    proxy = urllib3.ProxyManager(f"http://127.0.0.1:{port}")
    writer = LedgerWriter(BUCKET, "p", s3, credentials(aws), http=proxy)

    first = write(writer, "req-1")

    assert refusing.requests == 1  # type: ignore[attr-defined]
    assert decompress(s3.get_object(Bucket=BUCKET, Key=first)["Body"].read()) == TEXT
    assert not writer.signed
    (warning,) = [r for r in caplog.records if "signed PUT failed" in r.getMessage()]
    assert warning.why == "SignedPutRefused: 403 AccessDenied"  # type: ignore[attr-defined]

    second = write(writer, "req-2")
    assert refusing.requests == 1  # type: ignore[attr-defined]
    assert decompress(s3.get_object(Bucket=BUCKET, Key=second)["Body"].read()) == TEXT


class _BusyFirst(BaseHTTPRequestHandler):
    """A proxy that answers the first request as S3 does when busy (`server.busy`: status and
    code), and the next ones as S3 taking the object."""

    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:
        server: Any = self.server
        server.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        status, code = server.busy if len(server.bodies) == 1 else (200, "")
        body = f"<Error><Code>{code}</Code></Error>".encode() if code else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.mark.parametrize(
    "busy", [(503, "SlowDown"), (500, "InternalError"), (400, "RequestTimeout")]
)
def test_a_busy_s3_costs_one_object_its_signed_put_not_the_next_ones(
    aws: AwsEnv, s3: Any, busy: tuple[int, str], caplog: pytest.LogCaptureFixture
) -> None:
    """S3 answering that it is busy says nothing against the signed PUT: that object is made by
    PutObject (with botocore's retries), and the next is signed again."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BusyFirst)
    server.bodies = []  # type: ignore[attr-defined]
    server.busy = busy  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = urllib3.ProxyManager(f"http://127.0.0.1:{server.server_address[1]}")
        writer = LedgerWriter(BUCKET, "", s3, credentials(aws), http=proxy)
        first = write(writer, "req-1")
        assert writer.signed
        second = write(writer, "req-2")
    finally:
        server.shutdown()
        server.server_close()

    assert len(server.bodies) == 2  # type: ignore[attr-defined]
    assert decompress(s3.get_object(Bucket=BUCKET, Key=first)["Body"].read()) == TEXT
    with pytest.raises(s3.exceptions.NoSuchKey):  # signed, taken by the proxy: not in moto
        s3.get_object(Bucket=BUCKET, Key=second)
    (warning,) = [r for r in caplog.records if "signed PUT failed" in r.getMessage()]
    assert "PutObject for this object" in warning.getMessage()
    assert warning.why == f"SignedPutRefused: {busy[0]} {busy[1]}"  # type: ignore[attr-defined]


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


def test_a_dropped_connection_is_tried_again_once_still_signed(aws: AwsEnv, s3: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DroppingFirst)
    server.bodies = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        proxy = urllib3.ProxyManager(f"http://127.0.0.1:{port}")
        writer = LedgerWriter(BUCKET, "", s3, credentials(aws), http=proxy)
        write(writer, "req-1")
    finally:
        server.shutdown()
        server.server_close()

    first, second = server.bodies  # type: ignore[attr-defined]
    assert first == second
    assert decompress(second) == TEXT
    assert writer.signed


class _Sent(Exception):
    """Stops PutObject once botocore has built its request."""


def put_object_url(s3: Any, bucket: str, key: str) -> str:
    """The URL botocore's PutObject sends `key` to (caught before it is sent)."""

    def stop(request: Any, **_: Any) -> None:
        raise _Sent(request.url)

    s3.meta.events.register_first("before-send.s3.PutObject", stop)
    with pytest.raises(_Sent) as sent:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    return str(sent.value)


KEYS = ["events/dt=2026-12-07/hour=11/req-1.jsonl.zst", "team a/ünï+cøde~/events/k=1&x.zst"]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "endpoint", [None, "http://localhost:4566", "http://127.0.0.1:5000", "https://s3.example.com"]
)
def test_the_object_url_is_where_put_object_sends_it(endpoint: str | None, key: str) -> None:
    """On AWS a regional virtual-hosted URL (botocore's defaults would presign, and so address
    the bucket by, S3's global endpoint); on a custom endpoint, botocore's own addressing."""
    session = boto3.session.Session(
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret", region_name="eu-west-1"
    )
    environ = {"AWS_ENDPOINT_URL": endpoint} if endpoint else {}
    s3 = session.client("s3", endpoint_url=endpoint, config=ledger_s3_config(environ))
    writer = LedgerWriter("my-ledger", "", s3, session.get_credentials())

    url = writer.object_url(key)

    assert url == put_object_url(s3, "my-ledger", key)
    if endpoint is None:
        assert url.startswith("https://my-ledger.s3.eu-west-1.amazonaws.com/")


def test_a_custom_endpoint_keeps_botocores_addressing() -> None:
    """moto on 127.0.0.1, a local stack on localhost: no bucket name prefixed to their host."""
    custom: Any = ledger_s3_config({"AWS_ENDPOINT_URL": "http://localhost:4566"})
    assert custom.s3 == {"payload_signing_enabled": False, "addressing_style": "auto"}
    assert custom.signature_version == "s3v4"
    on_aws: Any = ledger_s3_config({})
    assert on_aws.s3 == {"payload_signing_enabled": False, "addressing_style": "virtual"}


def test_with_a_proxy_configured_every_put_is_put_object(
    aws: AwsEnv, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore sends through a proxy set in the environment; the signed PUT would not."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    http = SentRequests()
    writer = LedgerWriter(BUCKET, "", s3, credentials(aws), http=http)
    monkeypatch.delenv("HTTPS_PROXY")  # moto is not behind it

    key = write(writer, "req-1")

    assert not writer.signed
    assert http.sent == []
    assert decompress(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == TEXT
