"""What the built Lambda layer holds, weighs, and costs a cold start (`make layer-report`).

    python scripts/layer_report.py LAYER_PYTHON_DIR [--check-only] [--runs N]

LAYER_PYTHON_DIR is a `sam build`'s MeterRelayLayer/python. The check (`make build-check` runs
it): the layer holds exactly the distributions layers/meter_relay/requirements.txt locks, at
their versions, nothing more. The report adds its size (unzipped, and zipped as Lambda stores
it) and, per function, the median time of a fresh interpreter (`python -S`, no site-packages)
to import the handler module and create its boto3 clients, in three layouts:
- as built: boto3 in the layer, precompiled by the layer's Makefile (.pyc, unchecked-hash)
- precompiled: the same layer compiled again here (a check that the build's .pyc are used)
- runtime boto3: the layer without boto3 and its tree, which come instead from a folder with .pyc,
  as the runtime's own copy would (the layout before boto3 was packaged)
Measured on this machine, not on Lambda: read the differences, not the absolute times.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import platform
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from devkit.layer_lock import locked, normalise

ROOT = Path(__file__).resolve().parent.parent
# each function's handler module, and the clients its first invocation creates
FUNCTIONS = {
    "forwarder": ("sqs", "ssm", "lambda"),
    "refresher": ("ssm", "secretsmanager"),
    "dlq_tools": ("sqs", "secretsmanager"),
}
BOTO3_TREE = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six")
COLD_START = """
import time
started = time.perf_counter()
import app, boto3
session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x",
                                aws_secret_access_key="x")
for service in {services!r}:
    session.client(service)
print(time.perf_counter() - started)
"""


def installed(layer: Path) -> dict[str, str]:
    found = {}
    for info in layer.glob("*.dist-info"):
        name, version = info.name.removesuffix(".dist-info").rsplit("-", 1)
        found[normalise(name)] = version
    return found


def check(layer: Path) -> list[str]:
    want, have = locked(), installed(layer)
    problems = [
        f"{name}: locked {version}, layer has {have.get(name, 'nothing')}"
        for name, version in sorted(want.items())
        if have.get(name) != version
    ]
    problems += [
        f"{name} {have[name]}: in the layer, not in the lock" for name in have.keys() - want.keys()
    ]
    return problems


def sizes(layer: Path) -> tuple[int, int]:
    files = [path for path in layer.rglob("*") if path.is_file()]
    unzipped = sum(path.stat().st_size for path in files)
    with tempfile.TemporaryFile() as scratch:
        with zipfile.ZipFile(scratch, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, Path("python") / path.relative_to(layer))
        return unzipped, scratch.tell()


def cold_start(paths: list[Path], function: str, runs: int) -> float:
    """Median seconds of `runs` fresh interpreters: import the handler, create its clients."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(str(p) for p in [ROOT / "functions" / function, *paths]),
        "PYTHONDONTWRITEBYTECODE": "1",  # as on Lambda, where nothing can be written there
        "POWERTOOLS_SERVICE_NAME": "layer-report",
    }
    code = COLD_START.format(services=FUNCTIONS[function])
    times = []
    for _ in range(runs):
        completed = subprocess.run(  # noqa: S603 (our interpreter, our code)
            [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise SystemExit(f"layer-report: {function} does not start:\n{completed.stderr}")
        times.append(float(completed.stdout))
    return statistics.median(times)


def layouts(layer: Path, scratch: Path) -> dict[str, list[Path]]:
    """The three layouts of the module docstring, built under `scratch`."""
    precompiled = scratch / "precompiled"
    shutil.copytree(layer, precompiled)
    compileall.compile_dir(
        precompiled, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )
    without, runtime = scratch / "without-boto3", scratch / "runtime"
    shutil.copytree(layer, without)
    runtime.mkdir()
    tree = {normalise(name) for name in BOTO3_TREE}
    for info in list(without.glob("*.dist-info")):
        if normalise(info.name.removesuffix(".dist-info").rsplit("-", 1)[0]) in tree:
            record = (info / "RECORD").read_text(encoding="utf-8").splitlines()
            for top in {line.split("/")[0].split(",")[0] for line in record} | {info.name}:
                if top not in ("", "..") and (without / top).exists():
                    shutil.move(without / top, runtime / top)
    compileall.compile_dir(runtime, quiet=1)
    native = _native(layer, scratch / "native")
    return {
        "as built": [*native, layer],
        "precompiled": [*native, precompiled],
        "runtime boto3": [*native, without, runtime],
    }


def _native(layer: Path, target: Path) -> list[Path]:
    """This machine's build of each compiled package the layer holds for another one (its
    arm64 extension modules cannot load here): the same release, from this interpreter's
    site-packages, put first on the path. Empty on an arm64 machine."""
    machine = platform.machine()
    foreign = {
        path.relative_to(layer).parts[0]
        for path in layer.rglob("*.so")
        if "aarch64" in path.name and machine != "aarch64"
    }
    if not foreign:
        return []
    target.mkdir()
    for package in sorted(foreign):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"layer-report: {package} is not installed here to stand in for arm64")
        shutil.copytree(next(iter(spec.submodule_search_locations)), target / package)
    compileall.compile_dir(target, quiet=1)
    return [target]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer", type=Path, help="a sam build's MeterRelayLayer/python")
    parser.add_argument("--check-only", action="store_true", help="only compare with the lock")
    parser.add_argument("--runs", type=int, default=15, help="fresh interpreters per figure")
    args = parser.parse_args()
    problems = check(args.layer)
    for problem in problems:
        print(f"layer-report: {problem}", file=sys.stderr)
    if problems or args.check_only:
        return 1 if problems else 0
    unzipped, zipped = sizes(args.layer)
    print(f"layer: {unzipped / 1e6:.1f} MB unzipped, {zipped / 1e6:.1f} MB zipped, as locked")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        cases = layouts(args.layer, Path(scratch))
        print(f"median of {args.runs} cold imports + clients, ms: " + ", ".join(cases))
        for function in FUNCTIONS:
            figures = [cold_start(paths, function, args.runs) * 1000 for paths in cases.values()]
            print(f"  {function:10} " + "  ".join(f"{figure:7.0f}" for figure in figures))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
