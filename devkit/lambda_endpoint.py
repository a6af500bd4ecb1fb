"""A local AWS Lambda endpoint: what `sam local start-lambda` provides, without a container.

boto3's `lambda.invoke(FunctionName=..., InvocationType="RequestResponse")` reaches the
template's functions, each run through the invocation harness (`devkit.harness`) in this
process. A client is pointed at it with the service-specific variable boto3 (botocore >= 1.31)
reads before the global one, so every other service still goes to moto:

    AWS_ENDPOINT_URL_LAMBDA=http://127.0.0.1:PORT    (AWS_ENDPOINT_URL stays moto's)

Run it in its own process (the harness swaps process-wide state, and the caller is often itself
a function running in the harness):

    python -m devkit.lambda_endpoint --template template.yaml --env-vars events/env.json \
        --port 0 [--lifetime SECONDS] [--extra-env JSON_OR_FILE] [--watch-stdin]

It prints its URL as the first line of stdout, then serves until SIGTERM, Ctrl-C, the end of
`--lifetime`, or (with `--watch-stdin`) the end of its standard input. The functions see this
process's environment (AWS_ENDPOINT_URL, credentials, region...), their template variables,
`--env-vars` overrides (sam local's format: {"Parameters": {...}, "<LogicalId>": {...}}, only for
variables the template declares) and `--extra-env` (any variable). From Python, for tests and
`make run`, `LambdaEndpoint(template, env_vars, extra_env)` starts and stops the subprocess.

What it serves:
- `POST /2015-03-31/functions/{FunctionName}/invocations`. FunctionName is a logical id of the
  template, or a name or ARN ending with one (`arn:aws:lambda:...:function:RefresherFunction`,
  `mystack-RefresherFunction`), optionally with a `:$LATEST` qualifier. `RequestResponse` answers
  200 with the result JSON; a failed invocation (exception, timeout, init error) answers 200 with
  `X-Amz-Function-Error: Unhandled` and Lambda's error document, as Lambda does. `Event` runs the
  function in the background and answers 202; `DryRun` answers 204.
- An unknown function: 404 `ResourceNotFoundException`; a body that is not JSON: 400
  `InvalidRequestContentException`.

Limits (by design):
- One invocation at a time across all functions (a lock), as the harness requires; concurrent
  callers wait. So a function served here that synchronously invokes another function of the
  same endpoint waits for itself (until its timeout): run such a caller elsewhere (in the
  tests, the forwarder runs in the test process and only the refresher runs here). Each
  function keeps one warm execution environment for the process's lifetime (a timed-out
  invocation discards it, as Lambda does).
- No request signing check, no IAM, no throttling (429) and no reserved concurrency.
- `LogType=Tail` is ignored (no `X-Amz-Log-Result`): the functions' logs go to this process's
  stdout/stderr. Versions, aliases and qualifiers other than `$LATEST` are not modelled (any
  qualifier runs the one environment). A payload that is a bare JSON string is refused (400):
  the harness reads a string event as a file path.
- Only the invoke API: no ListFunctions, GetFunction, InvokeWithResponseStream, and so on.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from devkit.harness import (
    ACCOUNT_ID,
    DEFAULT_REGION,
    HarnessError,
    Invocation,
    LambdaFunction,
    load_function,
    load_template,
)

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
_QUALIFIER = re.compile(r":(\$LATEST|[A-Za-z0-9_-]+)$")
STARTUP_TIMEOUT_SECONDS = 60.0


# --- the server (runs in its own process) ----------------------------------------------------


class FunctionHost:
    """The template's functions, one warm environment each, invoked one at a time."""

    def __init__(
        self,
        template: str | os.PathLike[str],
        env_vars: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.template = Path(template)
        self.env_vars = env_vars
        self.extra_env = dict(extra_env or {})
        resources = load_template(self.template)["Resources"]
        self.logical_ids = sorted(
            name
            for name, resource in resources.items()
            if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Function"
        )
        self._functions: dict[str, LambdaFunction] = {}
        self._lock = threading.Lock()

    def resolve(self, function_name: str) -> str | None:
        """The logical id that a FunctionName (id, name or ARN, maybe qualified) designates."""
        name = unquote(function_name)
        if name.startswith("arn:"):
            # arn:aws:lambda:region:account:function:name[:qualifier]
            parts = name.split(":")
            name = parts[6] if len(parts) >= 7 else ""
        else:
            name = _QUALIFIER.sub("", name) if name.count(":") == 1 else name
        candidates = [
            logical_id
            for logical_id in self.logical_ids
            if name == logical_id or name.endswith(logical_id)
        ]
        # the longest match wins: "MyRefresherFunction" beats "RefresherFunction" for "x-MyRef..."
        return max(candidates, key=len) if candidates else None

    def invoke(self, logical_id: str, payload: Any) -> Invocation:
        with self._lock:
            function = self._functions.get(logical_id)
            if function is None:
                function = load_function(
                    self.template, logical_id, env_vars=self.env_vars, extra_env=self.extra_env
                )
                self._functions[logical_id] = function
            return function.invoke(payload)

    def close(self) -> None:
        with self._lock:
            for function in self._functions.values():
                function.close()
            self._functions.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects
    server_version = "meter-relay-lambda-endpoint/0.1"
    host: FunctionHost  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the functions' own logs are what matters

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _error(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"Type": "User", "Message": message, "message": message}).encode()
        self._reply(status, body, {"x-amzn-ErrorType": error_type})

    def do_GET(self) -> None:
        self._error(404, "UnknownOperationException", "only invoke is served")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        match = _INVOKE_PATH.match(urlsplit(self.path).path)
        if match is None:
            self._error(404, "UnknownOperationException", f"no route {self.path}")
            return
        requested = match.group(1)
        logical_id = self.host.resolve(requested)
        if logical_id is None:
            arn = f"arn:aws:lambda:{DEFAULT_REGION}:{ACCOUNT_ID}:function:{unquote(requested)}"
            self._error(404, "ResourceNotFoundException", f"Function not found: {arn}")
            return
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            self._error(
                400, "InvalidRequestContentException", f"Could not parse request body: {error}"
            )
            return
        if isinstance(payload, str):
            self._error(
                400,
                "InvalidRequestContentException",
                "a bare JSON string payload is not supported by the local endpoint",
            )
            return
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if invocation_type == "DryRun":
            self._reply(HTTPStatus.NO_CONTENT, b"")
            return
        if invocation_type == "Event":
            threading.Thread(
                target=self.host.invoke, args=(logical_id, payload), daemon=True
            ).start()
            self._reply(HTTPStatus.ACCEPTED, b"")
            return
        if invocation_type != "RequestResponse":
            self._error(
                400, "InvalidParameterValueException", f"InvocationType {invocation_type!r}"
            )
            return
        try:
            invocation = self.host.invoke(logical_id, payload)
        except HarnessError as error:
            self._error(400, "InvalidParameterValueException", str(error))
            return
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if invocation.error is not None:
            headers["X-Amz-Function-Error"] = "Unhandled"
            body = json.dumps(invocation.error).encode()
        else:
            body = json.dumps(invocation.result).encode()
        self._reply(HTTPStatus.OK, body, headers)


def make_server(
    host: FunctionHost, address: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    handler = type("LambdaEndpointHandler", (_Handler,), {"host": host})
    server = ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    return server


def _json_or_file(value: str | None) -> Any:
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        return json.loads(value)
    return json.loads(Path(value).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.lambda_endpoint",
        description="Serve the template's functions on a local Lambda invoke endpoint.",
    )
    parser.add_argument("--template", default="template.yaml")
    parser.add_argument("--env-vars", default=None, help="sam local env-vars JSON, or its file")
    parser.add_argument(
        "--extra-env", default=None, help="JSON object (or file): variables set regardless"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001, help="0 picks a free port")
    parser.add_argument("--lifetime", type=float, default=None, help="stop after SECONDS")
    parser.add_argument(
        "--watch-stdin", action="store_true", help="stop when standard input closes"
    )
    args = parser.parse_args(argv)

    env_vars = _json_or_file(args.env_vars)
    extra_env = _json_or_file(args.extra_env) or {}
    host = FunctionHost(args.template, env_vars, {k: str(v) for k, v in extra_env.items()})
    server = make_server(host, args.host, args.port)
    stopping = threading.Event()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    if args.watch_stdin:

        def watch() -> None:
            with contextlib.suppress(OSError, ValueError):
                while sys.stdin.buffer.read(4096):
                    pass
            stopping.set()

        threading.Thread(target=watch, daemon=True).start()

    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    address, port = server.server_address[:2]
    url = f"http://{address!s}:{port}"
    print(url, flush=True)
    print(f"lambda endpoint on {url} for {', '.join(host.logical_ids)}", file=sys.stderr)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            stopping.wait(args.lifetime)
    finally:
        server.shutdown()
        server.server_close()
        host.close()
    return 0


# --- the client side: start and stop the subprocess ------------------------------------------


class LambdaEndpoint:
    """Runs `python -m devkit.lambda_endpoint` in a subprocess: `with LambdaEndpoint(...) as e`.

    `e.url` is the endpoint; `e.client_env` is what to give a boto3 user to reach it
    (AWS_ENDPOINT_URL_LAMBDA). extra_env is set in the subprocess's environment (on top of
    this process's) and applied to the functions regardless of the template, like the
    harness's extra_env. The subprocess's output (the functions' logs) is kept, last lines
    first to go, in `output()`; it also stops by itself when this process goes away.
    """

    def __init__(
        self,
        template: str | os.PathLike[str] = "template.yaml",
        env_vars: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        extra_env: Mapping[str, str] | None = None,
        *,
        lifetime: float | None = None,
        keep_lines: int = 2000,
        echo: bool = False,
    ) -> None:
        self.template = Path(template)
        self.env_vars = env_vars
        self.extra_env = dict(extra_env or {})
        self.lifetime = lifetime
        self.echo = echo
        self._lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("LambdaEndpoint is not started")
        return self._url

    @property
    def client_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_LAMBDA": self.url}

    def output(self) -> list[str]:
        return list(self._lines)

    def running(self) -> bool:
        return self._process is not None

    def start(self) -> Self:
        if self._process is not None:
            return self
        command = [sys.executable, "-m", "devkit.lambda_endpoint", "--port", "0"]
        command += ["--template", str(self.template), "--watch-stdin"]
        if self.env_vars is not None:
            env_vars = self.env_vars
            text = os.fspath(env_vars) if isinstance(env_vars, str | os.PathLike) else None
            command += ["--env-vars", text if text is not None else json.dumps(env_vars)]
        if self.extra_env:
            command += ["--extra-env", json.dumps(self.extra_env)]
        if self.lifetime is not None:
            command += ["--lifetime", str(self.lifetime)]
        environment = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        environment["PYTHONPATH"] = os.pathsep.join(
            [root, *filter(None, [environment.get("PYTHONPATH")])]
        )
        process = subprocess.Popen(  # noqa: S603 (our own module, with our interpreter)
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        self._process = process
        found = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                text = line.rstrip("\n")
                if self._url is None and text.startswith("http://"):
                    self._url = text.strip()
                    found.set()
                    continue
                self._lines.append(text)
                if self.echo:
                    print(text, file=sys.stderr)
            found.set()  # the process ended

        self._reader = threading.Thread(target=read, name="lambda-endpoint-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not found.wait(0.05):
            if time.monotonic() > deadline:
                break
        if self._url is None:
            self.stop()
            tail = "\n".join(self.output()[-20:])
            raise RuntimeError(f"the lambda endpoint did not start:\n{tail}")
        return self

    def kill(self) -> None:
        """SIGKILL the endpoint mid-work, as a crashed execution environment dies (chaos runs);
        `start()` brings up a fresh one (a cold start) on a new port."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        self.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        if self._reader is not None:
            self._reader.join(5)
        self._url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
