"""The wheel that `pipx install .` builds: the operators' `meter-relay` and nothing of the dev kit.

The checkout's files (as git would take them) are built into a wheel, which is installed into a
fresh venv from a local folder of wheels with no index (`--no-index`), so what gets installed is
exactly what the wheel declares. That folder, .cache/wheels (git-ignored), is filled from PyPI
with constraints.txt's versions the first time, and read offline after that.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import meter_relay
from tests.commands import ROOT, run
from tests.message_schema import SCHEMA_PATH

WHEELS = ROOT / ".cache" / "wheels"
DEV_SCRIPTS = ("stripe-emulator", "lambda-invoke")


def pip(*args: str | Path, cwd: Path) -> str:
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", *args, cwd=cwd)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of this checkout: what git tracks plus new files it does not ignore."""
    base = tmp_path_factory.mktemp("wheel")
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    source = base / "source"
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # a deleted file stays listed until its deletion is staged
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip(
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        base / "dist",
        source,
        cwd=base,
    )
    [built] = (base / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no pip of its own) with the wheel installed; its bin folder."""
    target = tmp_path_factory.mktemp("pipx-like") / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    offline = ("--no-index", "--find-links", WHEELS, "--find-links", wheel.parent)
    try:
        pip("--python", python, "install", "--quiet", *offline, "meter-relay", cwd=target)
    except AssertionError:  # a wheel missing from the folder: fetch the declared tree once
        for stale in WHEELS.glob("meter_relay-*.whl"):  # pip would read its old requirements
            stale.unlink()
        pip("download", "--quiet", "--only-binary=:all:", "-c", ROOT / "constraints.txt",
            "-d", WHEELS, wheel, cwd=target)  # fmt: skip
        pip("--python", python, "install", "--quiet", *offline, "meter-relay", cwd=target)
    return target / "bin"


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_wheel_declares_what_the_cli_imports_and_its_licence(wheel: Path) -> None:
    meta = metadata(wheel)
    requires = meta.get_all("Requires-Dist", [])
    required = {re.split(r"[ ;<>=!~\[]", r)[0] for r in requires if "extra ==" not in r}
    assert required == {
        "aws-lambda-powertools",
        "boto3",
        "msgspec",
        "requests",
        "urllib3",
        "zstandard",  # the ledger's objects: trace, reconcile, errors pull and dlq cancel
    }
    # meter-relay[local]: DuckDB, for trace and reconcile without Athena
    extras = {re.split(r"[ ;<>=!~\[]", r)[0] for r in requires if "extra ==" in r}
    assert extras == {"duckdb"}
    assert meta.get_all("Provides-Extra") == ["local"]
    assert meta["Requires-Python"] == ">=3.13"
    assert meta["License-Expression"] == "MIT"
    assert meta["Version"] == meter_relay.__version__


def test_the_wheel_holds_the_library_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"meter_relay"}
    library = ROOT / "layers" / "meter_relay"
    sources = {str(p.relative_to(library)) for p in (library / "meter_relay").rglob("*.py")}
    assert sources <= set(names)  # subpackages too
    assert {"meter_relay/message.schema.json", "meter_relay/py.typed"} <= set(names)
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert scripts.split() == ["[console_scripts]", "meter-relay", "=", "meter_relay.cli:main"]


def test_meter_relay_runs_from_a_fresh_install(installed: Path) -> None:
    env = {"PATH": f"{installed}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(installed)}
    assert "dlq" in run(installed / "meter-relay", "--help", cwd=installed, env=env)
    assert "dlq" in run(installed / "python", "-m", "meter_relay", "--help", cwd=installed, env=env)
    python = installed / "python"
    shipped = run(
        python,
        "-c",
        "import importlib.resources as r; "
        "print(r.files('meter_relay').joinpath('message.schema.json').read_text(), end='')",
        cwd=installed,
        env=env,
    )
    assert shipped == SCHEMA_PATH.read_text(encoding="utf-8")
    pip("--python", python, "check", cwd=installed)


def test_the_dev_kit_is_not_installed(installed: Path) -> None:
    completed = subprocess.run(  # noqa: S603 (the fresh venv's interpreter)
        [installed / "python", "-c", "import devkit"],
        cwd=installed,
        env={"PATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    assert "No module named 'devkit'" in completed.stderr
    for script in DEV_SCRIPTS:
        assert not (installed / script).exists()
