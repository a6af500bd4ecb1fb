"""Run a SAM template's Python function in this process, as `sam local invoke` would.

There is no container runtime here, so the harness reproduces what matters of one Lambda
execution environment in-process: the template's environment (resolved as SAM resolves it), the
function's code and layers first on `sys.path`, a `LambdaContext` with a real deadline, JSON
marshalling of the result and Lambda-shaped error results.

Each `LambdaFunction` is one execution environment. Its first invoke imports the handler in a
fresh import state; module-level state (caches, clients, connection pools) then persists across
invokes of that object, as Lambda reuses a warm environment, while another `LambdaFunction`
(of the same or another function) gets its own copies of the modules its code and layers provide.

Environment, as `sam local invoke` builds it: Globals.Function merged with the function (maps
key by key, lists such as Layers concatenated); values that are strings, numbers or booleans;
Refs to parameters (override, else Default) and pseudo parameters; Fn::Sub and Fn::Join over
those, and Fn::If over Conditions made of them (Fn::Equals, Fn::Not, Fn::And, Fn::Or), as SAM
CLI's intrinsic resolver does. Anything else (a resource's Ref, GetAtt) is left out unless
overridden.
`--env-vars` overrides ({"Parameters": {...}, "<LogicalId>": {...}}, the function's section
winning) apply, like SAM's, only to variables the template declares; `extra_env` applies to any.
Lambda's own variables (AWS_LAMBDA_FUNCTION_NAME, AWS_REGION, _HANDLER, ...) are added.

Known differences from Lambda, by design:
- The process environment is the base: the function sees `os.environ` plus its own variables
  (variables the template declares but cannot resolve are hidden). The caller's os.environ is
  put back after each invoke; changes the handler makes stay with its environment.
- Only modules that the function's code or layer directories provide are isolated. Third-party
  dependencies (a layer's requirements.txt) come from the virtualenv and are shared by every
  function in the process, with their module-level caches (e.g. Powertools parameters).
- A timed-out handler's thread cannot be killed: it keeps running in the background while the
  environment is discarded, as Lambda would freeze and then reset it.
- One invocation at a time: process-wide state (os.environ, sys.path, sys.modules) is swapped,
  so invoking from several threads at once is not supported.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import importlib
import json
import os
import queue
import re
import sys
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Self

import yaml  # type: ignore[import-untyped, unused-ignore]

ACCOUNT_ID = "123456789012"
STACK_NAME = "local"
DEFAULT_REGION = "us-east-1"
FUNCTION_VERSION = "$LATEST"
INIT_TIMEOUT_SECONDS = 10.0  # Lambda's limit for the init phase of an on-demand environment
_DEFAULT_TIMEOUT = 3  # Lambda's defaults when neither the function nor Globals set them
_DEFAULT_MEMORY = 128

type EnvVarsSource = Mapping[str, Any] | str | os.PathLike[str]
type Handler = Callable[[Any, LambdaContext], Any]


class HarnessError(Exception):
    """The template, a logical id or an override cannot be turned into a runnable function."""


class InvocationError(Exception):
    """Raised by `Invocation.raise_for_error()`; `.error` is Lambda's error document."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('errorType')}: {error.get('errorMessage')}")
        self.error = dict(error)


class InitError(InvocationError):
    """The handler module could not be imported (raised by `LambdaFunction.load()`)."""


# --- template loading ------------------------------------------------------------------------


class CfnLoader(yaml.SafeLoader):  # type: ignore[misc, unused-ignore]
    """SafeLoader for CloudFormation: short-form tags become long-form dicts, dates stay strings.

    CloudFormation reads `Default: 2026-01-01` as a string; plain YAML would make it a date.
    """

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_intrinsic(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
    """`!Ref X` -> {"Ref": "X"}, `!GetAtt A.B` -> {"Fn::GetAtt": ["A", "B"]}, `!Sub` -> Fn::Sub."""
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _construct_intrinsic)


def load_template(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML (or JSON) template into plain Python data."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=CfnLoader)  # noqa: S506 (CfnLoader is a SafeLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise HarnessError(f"cannot read template {os.fspath(path)}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise HarnessError(f"{os.fspath(path)} is not a template: no Resources section")
    return data


# --- intrinsic resolution --------------------------------------------------------------------


class _Unresolvable(Exception):
    """A value that only a deployed stack could give (a resource's Ref, GetAtt, Fn::If...)."""


_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class _Resolver:
    """Resolves what `sam local invoke` can resolve without a stack: parameters, pseudo
    parameters, and the conditions built of them (Fn::If, Fn::Equals, Fn::Not, Fn::And, Fn::Or).
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        overrides: Mapping[str, str],
        region: str,
        stack_name: str = STACK_NAME,
    ):
        self.parameters: Mapping[str, Any] = template.get("Parameters") or {}
        self.conditions: Mapping[str, Any] = template.get("Conditions") or {}
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            raise HarnessError(f"parameter overrides for undeclared parameters: {unknown}")
        self.overrides = overrides
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::StackName": stack_name,
            "AWS::StackId": (
                f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/"
                "51af3dc0-da77-11e4-872e-1234567db123"
            ),
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }

    def value(self, node: Any) -> str:
        if isinstance(node, bool):  # before int: bool is an int
            return "true" if node else "false"
        if isinstance(node, int | float | str):
            return str(node)
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref" and isinstance(arg, str):
                return self.ref(arg)
            if key == "Fn::Sub":
                return self.sub(arg)
            if key == "Fn::Join" and isinstance(arg, list) and len(arg) == 2:
                delimiter, items = arg
                if isinstance(delimiter, str) and isinstance(items, list):
                    return delimiter.join(self.value(item) for item in items)
            if key == "Fn::If" and isinstance(arg, list) and len(arg) == 3:
                name, when_true, when_false = arg
                return self.value(when_true if self.condition(name) else when_false)
        raise _Unresolvable(repr(node))

    def condition(self, name: Any) -> bool:
        if not isinstance(name, str) or name not in self.conditions:
            raise _Unresolvable(f"condition {name!r}")
        return self.truth(self.conditions[name])

    def truth(self, node: Any) -> bool:
        """A condition's value (only conditions of parameters and pseudo parameters)."""
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Equals" and isinstance(arg, list) and len(arg) == 2:
                return self.value(arg[0]) == self.value(arg[1])
            if key == "Fn::Not" and isinstance(arg, list) and len(arg) == 1:
                return not self.truth(arg[0])
            if key == "Fn::And" and isinstance(arg, list):
                return all(self.truth(item) for item in arg)
            if key == "Fn::Or" and isinstance(arg, list):
                return any(self.truth(item) for item in arg)
        raise _Unresolvable(repr(node))

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            if name in self.overrides:
                return self.overrides[name]
            declaration = self.parameters[name]
            if isinstance(declaration, dict) and "Default" in declaration:
                return self.value(declaration["Default"])
        raise _Unresolvable(name)

    def sub(self, arg: Any) -> str:
        variables: Mapping[str, Any] = {}
        if isinstance(arg, list) and len(arg) == 2 and isinstance(arg[1], dict):
            arg, variables = arg
        if not isinstance(arg, str):
            raise _Unresolvable(repr(arg))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            name = name.strip()
            if name in variables:
                return self.value(variables[name])
            return self.ref(name)

        return _SUB_VARIABLE.sub(replace, arg)

    def required(self, node: Any, what: str) -> str:
        try:
            return self.value(node)
        except _Unresolvable as exc:
            raise HarnessError(f"{what} cannot be resolved locally: {exc}") from None


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return key in ("Ref", "Condition") or (isinstance(key, str) and key.startswith("Fn::"))


def _merge_globals(defaults: Any, own: Any) -> Any:
    """SAM's Globals rules: maps merge key by key, lists concatenate, anything else is replaced."""
    if isinstance(defaults, dict) and isinstance(own, dict):
        if _is_intrinsic(defaults) or _is_intrinsic(own):
            return copy.deepcopy(own)
        merged = copy.deepcopy(defaults)
        for key, value in own.items():
            merged[key] = _merge_globals(merged[key], value) if key in merged else value
        return merged
    if isinstance(defaults, list) and isinstance(own, list):
        return [*defaults, *own]
    return copy.deepcopy(own)


# --- the resolved function -------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpec:
    """Everything needed to run one function, resolved from the template and the overrides."""

    logical_id: str
    handler: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    runtime: str
    timeout: float
    memory_size: int
    region: str
    environment: Mapping[str, str]
    hidden: frozenset[str]  # declared in the template, unresolvable: removed during invokes

    @property
    def function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{self.logical_id}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.logical_id}"


def _stringify_override(name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise HarnessError(f"env-vars value for {name} must be a string, number or boolean")


def _read_env_vars(source: EnvVarsSource | None, logical_id: str) -> dict[str, str]:
    """The `--env-vars` format: {"Parameters": {...}, "<LogicalId>": {...}}, function wins."""
    if source is None:
        return {}
    if isinstance(source, str | os.PathLike):
        try:
            data: Any = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot read env-vars file {os.fspath(source)}: {exc}") from exc
    else:
        data = source
    if not isinstance(data, Mapping):
        raise HarnessError("env-vars must be a JSON object of sections")
    merged: dict[str, str] = {}
    for section in ("Parameters", logical_id):
        variables = data.get(section) or {}
        if not isinstance(variables, Mapping):
            raise HarnessError(f"env-vars section {section!r} must be an object")
        merged.update({k: _stringify_override(k, v) for k, v in variables.items()})
    return merged


def _number(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise HarnessError(f"{what} is not a number: {value!r}") from None


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _layer_dirs(
    template: Mapping[str, Any], base: Path, layers: Any, resolver: _Resolver
) -> tuple[Path, ...]:
    """Local layers' content directories, which the runtime would extract to /opt/python."""
    if layers is None:
        return ()
    if not isinstance(layers, list):
        raise HarnessError("Layers must be a list")
    resources: Mapping[str, Any] = template["Resources"]
    dirs: list[Path] = []
    for entry in layers:
        target = entry.get("Ref") if isinstance(entry, dict) and len(entry) == 1 else None
        resource = resources.get(target) if isinstance(target, str) else None
        props = (resource or {}).get("Properties") or {}
        content = props.get("ContentUri", props.get("Content"))
        if resource is None or resource.get("Type") not in (
            "AWS::Serverless::LayerVersion",
            "AWS::Lambda::LayerVersion",
        ):
            # e.g. a public layer ARN: its packages are expected in the virtualenv instead
            warnings.warn(f"layer {entry!r} is not a local layer; skipped", stacklevel=3)
            continue
        directory = (base / resolver.required(content, f"ContentUri of {target}")).resolve()
        if not directory.is_dir():
            raise HarnessError(f"layer {target}: {directory} is not a directory")
        if directory not in dirs:
            dirs.append(directory)
    return tuple(dirs)


def resolve_function(
    template_path: str | os.PathLike[str],
    logical_id: str,
    *,
    env_vars: EnvVarsSource | None = None,
    extra_env: Mapping[str, str] | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
    region: str | None = None,
    timeout: float | None = None,
    stack_name: str = STACK_NAME,
) -> FunctionSpec:
    """Resolve an AWS::Serverless::Function as `sam local invoke` sees it.

    env_vars (the `--env-vars` document, or its path) overrides only variables the template
    declares, as SAM does; extra_env is applied regardless (e.g. AWS_ENDPOINT_URL for moto).
    stack_name is AWS::StackName (`sam local` says "local"; tests give two stacks their own).
    """
    template_file = Path(template_path).resolve()
    template = load_template(template_file)
    resource = template["Resources"].get(logical_id)
    if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
        functions = sorted(
            name
            for name, res in template["Resources"].items()
            if isinstance(res, dict) and res.get("Type") == "AWS::Serverless::Function"
        )
        raise HarnessError(f"{logical_id} is not an AWS::Serverless::Function; have {functions}")
    defaults = ((template.get("Globals") or {}).get("Function")) or {}
    props: dict[str, Any] = _merge_globals(defaults, resource.get("Properties") or {})

    extra = dict(extra_env or {})
    region = (
        region
        or extra.get("AWS_REGION")
        or extra.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_REGION")
        or DEFAULT_REGION
    )
    resolver = _Resolver(template, parameter_overrides or {}, region, stack_name)
    base = template_file.parent

    handler = resolver.required(props.get("Handler"), f"{logical_id}.Handler")
    code_uri = props.get("CodeUri")
    if not isinstance(code_uri, str | dict):
        raise HarnessError(f"{logical_id} has no local CodeUri")
    code_dir = (base / resolver.required(code_uri, f"{logical_id}.CodeUri")).resolve()
    if not code_dir.is_dir():
        raise HarnessError(f"{logical_id}: CodeUri {code_dir} is not a directory")
    runtime = resolver.required(props.get("Runtime", "python3.13"), f"{logical_id}.Runtime")
    if not runtime.startswith("python"):
        raise HarnessError(f"{logical_id}: runtime {runtime} cannot run in this harness")
    here = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if runtime != here:
        warnings.warn(f"{logical_id} declares {runtime}; running on {here}", stacklevel=2)
    if timeout is None:
        timeout = _number(
            resolver.required(props.get("Timeout", _DEFAULT_TIMEOUT), "Timeout"), "Timeout"
        )
    memory = int(
        _number(
            resolver.required(props.get("MemorySize", _DEFAULT_MEMORY), "MemorySize"),
            "MemorySize",
        )
    )
    layer_dirs = _layer_dirs(template, base, props.get("Layers"), resolver)

    declared = (props.get("Environment") or {}).get("Variables") or {}
    if not isinstance(declared, dict):
        raise HarnessError(f"{logical_id}: Environment.Variables must be a map")
    overrides = _read_env_vars(env_vars, logical_id)
    environment: dict[str, str] = {}
    hidden: set[str] = set()
    for name, node in declared.items():
        if name in overrides:
            environment[name] = overrides[name]
            continue
        try:
            environment[name] = resolver.value(node)
        except _Unresolvable:
            hidden.add(name)
    environment.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
            "AWS_LAMBDA_FUNCTION_VERSION": FUNCTION_VERSION,
            "AWS_LAMBDA_FUNCTION_TIMEOUT": _format_seconds(timeout),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{logical_id}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime}",
            "LAMBDA_TASK_ROOT": str(code_dir),
            "_HANDLER": handler,
            "AWS_SAM_LOCAL": "true",
        }
    )
    environment.update(extra)
    return FunctionSpec(
        logical_id=logical_id,
        handler=handler,
        code_dir=code_dir,
        layer_dirs=layer_dirs,
        runtime=runtime,
        timeout=timeout,
        memory_size=memory,
        region=region,
        environment=environment,
        hidden=frozenset(hidden - set(extra)),
    )


# --- context and results ---------------------------------------------------------------------


class LambdaContext:
    """The context object handlers receive, with the attributes of the Python runtime's."""

    def __init__(
        self,
        *,
        function_name: str,
        function_version: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        aws_request_id: str,
        log_group_name: str,
        log_stream_name: str,
        deadline: float,
    ) -> None:
        self.function_name = function_name
        self.function_version = function_version
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id
        self.log_group_name = log_group_name
        self.log_stream_name = log_stream_name
        self.identity: object | None = None
        self.client_context: object | None = None
        self.tenant_id: str | None = None
        self._deadline = deadline  # time.monotonic() value

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    """The outcome of one invoke: a JSON result or Lambda's error document."""

    request_id: str
    result: Any
    error: dict[str, Any] | None
    duration_ms: float
    cold_start: bool
    init_duration_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> Any:
        """Return the result, or raise InvocationError carrying the error document."""
        if self.error is not None:
            raise InvocationError(self.error)
        return self.result


def _error_document(exc: BaseException, request_id: str) -> dict[str, Any]:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def _lambda_error(error_type: str, message: str, request_id: str = "") -> dict[str, Any]:
    return {
        "errorMessage": message,
        "errorType": error_type,
        "requestId": request_id,
        "stackTrace": [],
    }


def _decimal_default(value: object) -> object:
    """The Python runtime's marshaller turns Decimal (e.g. from DynamoDB) into a number."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _read_event(event: object) -> Any:
    """A fresh JSON copy of the event, as the runtime deserialises each payload. Bytes are the
    payload itself, as the Runtime API hands it over: decoded only, like Lambda does."""
    if event is None:
        return {}
    if isinstance(event, bytes | bytearray):
        try:
            return json.loads(event)
        except ValueError as exc:
            raise HarnessError(f"event bytes are not JSON: {exc}") from exc
    if isinstance(event, str | os.PathLike):
        try:
            return json.loads(Path(event).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot read event {os.fspath(event)}: {exc}") from exc
    try:
        return json.loads(json.dumps(event))
    except (TypeError, ValueError) as exc:
        raise HarnessError(f"event is not JSON: {exc}") from exc


# --- the execution environment ---------------------------------------------------------------


class _Job:
    def __init__(self, target: Callable[[], Any]) -> None:
        self.target: Callable[[], Any] | None = target
        self.done = threading.Event()
        self.value: Any = None
        self.exception: BaseException | None = None

    def run(self) -> None:
        assert self.target is not None, "a job runs once"
        try:
            self.value = self.target()
        except BaseException as exc:  # the handler's failure is the result, even SystemExit
            self.exception = exc
        finally:
            # the target holds the event: let it go with its invoke, as Lambda's runtime does,
            # not when the worker takes the next job (whose time then counted freeing it)
            self.target = None
            self.done.set()


class _Worker:
    """One thread per environment: Lambda runs init and every invoke on the same thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        # daemon: a timed-out handler cannot be killed and must not block interpreter exit
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    def submit(self, target: Callable[[], Any]) -> _Job:
        job = _Job(target)
        self._jobs.put(job)
        return job

    def stop(self) -> None:
        self._jobs.put(None)


def _provided_names(roots: Sequence[Path]) -> frozenset[str]:
    """Top-level module names that the function's code and layer directories provide."""
    names: set[str] = set()
    for root in roots:
        for entry in root.iterdir():
            if entry.is_file() and entry.suffix in (".py", ".so", ".pyd"):
                names.add(entry.name.split(".", 1)[0])
            elif entry.is_dir() and entry.name.isidentifier() and entry.name != "__pycache__":
                children = {child.suffix for child in entry.iterdir() if child.is_file()}
                if children & {".py", ".so", ".pyd"}:
                    names.add(entry.name)
    return frozenset(n for n in names if n.isidentifier() and not n.startswith("__"))


def _pop_modules(names: frozenset[str]) -> dict[str, ModuleType]:
    taken = [key for key in sys.modules if key.split(".", 1)[0] in names]
    return {key: sys.modules.pop(key) for key in taken}


def _restore_environ(saved: Mapping[str, str]) -> None:
    for key in [key for key in os.environ if key not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


@dataclass
class _Environment:
    """A warm execution environment: its modules, handler, thread and variables."""

    variables: dict[str, str]
    provided: frozenset[str]
    path_entries: list[str]
    worker: _Worker
    log_stream_name: str
    removed: set[str] = field(default_factory=set)  # variables hidden from the function
    modules: dict[str, ModuleType] = field(default_factory=dict)
    handler: Handler | None = None


def _import_handler(handler: str) -> Handler:
    """What the Python runtime does at init, with its error types."""
    module_name, _, function_name = handler.rpartition(".")
    if not module_name or not function_name:
        raise InitError(_lambda_error("Runtime.MalformedHandlerName", f"Bad handler '{handler}'"))
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"Unable to import module '{module_name}': {exc}"
        raise InitError(_lambda_error("Runtime.ImportModuleError", message)) from exc
    except SyntaxError as exc:
        message = f"Syntax error in module '{module_name}': {exc}"
        raise InitError(_lambda_error("Runtime.UserCodeSyntaxError", message)) from exc
    except Exception as exc:
        raise InitError(_error_document(exc, "")) from exc
    target = getattr(module, function_name, None)
    if not callable(target):
        message = f"Handler '{function_name}' missing on module '{module_name}'"
        raise InitError(_lambda_error("Runtime.HandlerNotFound", message))
    return target  # type: ignore[no-any-return]


class LambdaFunction:
    """One execution environment of a function: cold on the first invoke, warm afterwards."""

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self._env: _Environment | None = None
        self._finalizer: weakref.finalize[[], LambdaFunction] | None = None

    @property
    def environment(self) -> dict[str, str]:
        """The variables the function sees on top of the process environment."""
        return dict(self.spec.environment)

    @property
    def loaded(self) -> bool:
        return self._env is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Discard the environment; the next invoke starts cold."""
        if self._finalizer is not None:
            self._finalizer()  # stops the worker thread
            self._finalizer = None
        self._env = None

    @contextmanager
    def _activated(self, env: _Environment, extra: Mapping[str, str]) -> Iterator[None]:
        """Swap in the environment's sys.path, modules and variables; put everything back.

        Changes the function makes to os.environ stay with its environment (one process in
        Lambda), so they are seen by its later invokes but never leak into the caller's.
        """
        saved_environ = dict(os.environ)
        saved_path = list(sys.path)
        set_aside = _pop_modules(env.provided)
        applied: dict[str, str] = {}
        try:
            sys.modules.update(env.modules)
            sys.path[:0] = env.path_entries
            for name in env.removed:
                os.environ.pop(name, None)
            os.environ.update(env.variables)
            os.environ.update(extra)
            applied = dict(os.environ)
            yield
        finally:
            current = dict(os.environ)
            for name, value in current.items():
                if applied.get(name) != value:
                    env.variables[name] = value
                    env.removed.discard(name)
            for name in applied.keys() - current.keys():
                env.variables.pop(name, None)
                env.removed.add(name)
            env.modules = _pop_modules(env.provided)
            sys.modules.update(set_aside)
            sys.path[:] = saved_path
            _restore_environ(saved_environ)

    def load(self) -> float:
        """Cold-start the environment now (import the handler); return the init duration in ms.

        Raises InitError with Lambda's error document when the import fails.
        """
        if self._env is not None:
            return 0.0
        spec = self.spec
        roots = [spec.code_dir, *spec.layer_dirs]
        stream = f"{datetime.datetime.now(datetime.UTC):%Y/%m/%d}/[{FUNCTION_VERSION}]"
        env = _Environment(
            variables={**spec.environment},
            provided=_provided_names(roots),
            path_entries=[str(root) for root in roots],
            worker=_Worker(f"lambda-{spec.logical_id}"),
            log_stream_name=stream + uuid.uuid4().hex,
            removed=set(spec.hidden),
        )
        env.variables["AWS_LAMBDA_LOG_STREAM_NAME"] = env.log_stream_name
        finalizer = weakref.finalize(self, env.worker.stop)
        started = time.perf_counter()
        with self._activated(env, {}):
            importlib.invalidate_caches()
            job = env.worker.submit(lambda: _import_handler(spec.handler))
            finished = job.done.wait(INIT_TIMEOUT_SECONDS)
        elapsed = (time.perf_counter() - started) * 1000
        failure = job.exception
        if not finished or failure is not None:
            finalizer()
            if failure is None:
                message = f"Init phase timed out after {INIT_TIMEOUT_SECONDS:.2f} seconds"
                raise InitError(_lambda_error("Sandbox.Timedout", message))
            if isinstance(failure, InitError):
                raise failure
            raise InitError(_error_document(failure, "")) from failure
        env.handler = job.value
        self._env = env
        self._finalizer = finalizer
        return elapsed

    def invoke(self, event: object = None, *, timeout: float | None = None) -> Invocation:
        """Invoke the handler with a JSON event (a dict, a list, or a path to a JSON file).

        timeout (seconds) overrides the function's Timeout for this call only.
        """
        payload = _read_event(event)
        request_id = str(uuid.uuid4())
        cold = self._env is None
        init_ms: float | None = None
        if cold:
            started = time.perf_counter()
            try:
                init_ms = self.load()
            except InitError as exc:
                elapsed = (time.perf_counter() - started) * 1000
                error = {**exc.error, "requestId": request_id}
                return Invocation(request_id, None, error, elapsed, True, elapsed)
        env = self._env
        if env is None or env.handler is None:
            raise RuntimeError("the environment failed to start")  # load() raises instead
        handler = env.handler
        limit = self.spec.timeout if timeout is None else timeout
        extra = {
            "AWS_LAMBDA_FUNCTION_TIMEOUT": _format_seconds(limit),
            "_X_AMZN_TRACE_ID": (
                f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};"
                f"Parent={uuid.uuid4().hex[:16]};Sampled=0"
            ),
        }
        with self._activated(env, extra):
            started = time.perf_counter()
            context = LambdaContext(
                function_name=self.spec.logical_id,
                function_version=FUNCTION_VERSION,
                invoked_function_arn=self.spec.function_arn,
                memory_limit_in_mb=self.spec.memory_size,
                aws_request_id=request_id,
                log_group_name=self.spec.log_group_name,
                log_stream_name=env.log_stream_name,
                deadline=time.monotonic() + limit,
            )
            job = env.worker.submit(lambda: handler(payload, context))
            finished = job.done.wait(limit)
            duration = (time.perf_counter() - started) * 1000
        if not finished:
            self.close()  # Lambda resets an environment whose invoke timed out
            message = f"RequestId: {request_id} Error: Task timed out after {limit:.2f} seconds"
            error = _lambda_error("Sandbox.Timedout", message, request_id)
            return Invocation(request_id, None, error, duration, cold, init_ms)
        if isinstance(job.exception, SystemExit):
            self.close()  # the runtime process exited: the next invoke starts cold
            message = (
                f"RequestId: {request_id} Error: Runtime exited with error: "
                f"exit status {job.exception.code}"
            )
            error = _lambda_error("Runtime.ExitError", message, request_id)
            return Invocation(request_id, None, error, duration, cold, init_ms)
        if job.exception is not None:
            error = _error_document(job.exception, request_id)
            return Invocation(request_id, None, error, duration, cold, init_ms)
        try:
            text = json.dumps(job.value, default=_decimal_default)
        except (TypeError, ValueError) as exc:
            error = _lambda_error(
                "Runtime.MarshalError", f"Unable to marshal response: {exc}", request_id
            )
            return Invocation(request_id, None, error, duration, cold, init_ms)
        return Invocation(request_id, json.loads(text), None, duration, cold, init_ms)


def load_function(
    template_path: str | os.PathLike[str],
    logical_id: str,
    env_vars: EnvVarsSource | None = None,
    extra_env: Mapping[str, str] | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
    *,
    region: str | None = None,
    timeout: float | None = None,
    stack_name: str = STACK_NAME,
) -> LambdaFunction:
    """Resolve a function from a template and return its (not yet started) environment."""
    return LambdaFunction(
        resolve_function(
            template_path,
            logical_id,
            env_vars=env_vars,
            extra_env=extra_env,
            parameter_overrides=parameter_overrides,
            region=region,
            timeout=timeout,
            stack_name=stack_name,
        )
    )
