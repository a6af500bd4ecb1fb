"""A Lambda Function URL on this machine: HTTP requests in, the function's answers out.

A Function URL (AuthType NONE) turns each HTTP request into an event of payload format 2.0
and invokes its function synchronously; the function's result becomes the HTTP response:
`statusCode`, `headers`, `cookies` and `body` (base64-decoded when `isBase64Encoded`), or, for
a result without `statusCode`, 200 with the result as JSON. A failed invocation (an exception,
a timeout) answers 502, as AWS does. Here the function is invoked through boto3's
`lambda.invoke` on a local Lambda endpoint (devkit.lambda_endpoint), which runs it through the
harness in its own process: this server has no harness of its own, so it can run beside one.

    with FunctionUrl(lambda_client, "ErrorReportsFunction") as url:
        requests.post(url.url, data=..., headers=...)

Not modelled: AWS_IAM auth, CORS, response streaming, the 6 MB payload limit.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

URL_ID = "meterrelaylocalfunctionurl000000"  # a Function URL's id: 32 lower-case characters
DOMAIN = f"{URL_ID}.lambda-url.us-east-1.on.aws"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded")
BAD_GATEWAY = b'{"Message":"Internal Server Error"}'


@dataclass(frozen=True)
class UrlAnswer:
    """One request the URL answered: the status and body its client received."""

    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request_event(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
) -> dict[str, Any]:
    """The Lambda event (payload format 2.0) a Function URL makes of an HTTP request."""
    parts = urlsplit(target)
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies += [c.strip() for c in value.split(";") if c.strip()]
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path or "/",
        "rawQueryString": parts.query,
        "headers": merged,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_ID,
            "domainName": DOMAIN,
            "domainPrefix": URL_ID,
            "http": {
                "method": method,
                "path": parts.path or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if parts.query:
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            query[name] = f"{query[name]},{value}" if name in query else value
        event["queryStringParameters"] = query
    if body:
        event["body"], event["isBase64Encoded"] = _body_text(body, merged.get("content-type", ""))
    return event


def _body_text(body: bytes, content_type: str) -> tuple[str, bool]:
    """A text body as it is; any other base64-encoded (isBase64Encoded)."""
    if content_type.lower().startswith(TEXT_TYPES) or "+json" in content_type:
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def invoke_function(lambda_client: Any, name: str, event: Any) -> tuple[Any, bool]:
    """Invoke a function synchronously: its result, and whether the invocation failed (an
    error result, or no answer from the endpoint)."""
    try:
        answer = lambda_client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
        result = json.loads(answer["Payload"].read() or b"null")
    except (BotoCoreError, ClientError, ValueError):
        return None, True
    return result, bool(answer.get("FunctionError"))


def response_parts(result: Any) -> tuple[int, dict[str, str], list[str], bytes]:
    """Status, headers, cookies and body of the HTTP response for a function's result."""
    if not isinstance(result, dict) or "statusCode" not in result:
        return 200, {"content-type": "application/json"}, [], json.dumps(result).encode()
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    body = result.get("body")
    if body is None:
        raw = b""
    elif result.get("isBase64Encoded"):
        raw = base64.b64decode(str(body))
    else:
        raw = (body if isinstance(body, str) else json.dumps(body)).encode()
    cookies = [str(c) for c in result.get("cookies") or []]
    return int(result["statusCode"]), headers, cookies, raw


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    url: ClassVar[FunctionUrl]

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        event = request_event(
            self.command, self.path, list(self.headers.items()), body, self.client_address[0]
        )
        status, headers, cookies, raw = self.url.invoke(event)
        self.send_response(status)
        for name, value in headers.items():
            if name not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return  # the function's own logs are what matters


class FunctionUrl:
    """A Function URL for one function of a local Lambda endpoint, served from a thread.

    `answers()` lists what each request was answered, in order (for a run's report).
    """

    def __init__(self, lambda_client: Any, function_name: str) -> None:
        self._lambda = lambda_client
        self.function_name = function_name
        self._answers: list[UrlAnswer] = []
        self._lock = threading.Lock()
        handler = type("FunctionUrlHandler", (_Handler,), {"url": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="function-url", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def invoke(self, event: dict[str, Any]) -> tuple[int, dict[str, str], list[str], bytes]:
        """Invoke the function with the request's event; the response's parts."""
        result, failed = invoke_function(self._lambda, self.function_name, event)
        if failed:
            parts: tuple[int, dict[str, str], list[str], bytes] = (
                502,
                {"content-type": "application/json"},
                [],
                BAD_GATEWAY,
            )
        else:
            parts = response_parts(result)
        with self._lock:
            self._answers.append(UrlAnswer(parts[0], parts[3]))
        return parts

    def answers(self) -> list[UrlAnswer]:
        with self._lock:
            return list(self._answers)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
