"""The deployed layer's lock (layers/meter_relay/requirements.txt, written by `make lock`): the
whole tree of requirements.in, every release hashed, at the versions the tests run.

`make build-check` checks that `sam build` installs exactly this lock into the layer.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.commands import ROOT

LAYER = ROOT / "layers" / "meter_relay"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)", re.M)


def pins(text: str) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


LOCK_TEXT = (LAYER / "requirements.txt").read_text(encoding="utf-8")
LOCK = pins(LOCK_TEXT)
DIRECT = pins((LAYER / "requirements.in").read_text(encoding="utf-8"))
CONSTRAINTS = pins((ROOT / "constraints.txt").read_text(encoding="utf-8"))


def test_every_locked_release_is_pinned_and_hashed() -> None:
    entries = re.split(r"\n(?=\S)", LOCK_TEXT.split("\n\n", 1)[-1].strip())
    requirements = [entry for entry in entries if not entry.startswith("#")]
    assert len(requirements) == len(LOCK)
    for entry in requirements:
        assert PIN.match(entry), entry
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"no hash: {entry.split()[0]}"


def test_the_lock_runs_what_the_tests_run() -> None:
    """constraints.txt builds the dev venv: boto3 and botocore included, same versions."""
    assert {"boto3", "botocore", "aws-lambda-powertools"} <= LOCK.keys()
    assert {name: CONSTRAINTS.get(name) for name in LOCK} == LOCK
    assert {name: LOCK.get(name) for name in DIRECT} == DIRECT


def test_the_lock_is_the_whole_tree_of_requirements_in() -> None:
    """Every dependency of every locked release (as the dev venv's metadata says), and no more."""
    tree: set[str] = set()
    todo = list(DIRECT)
    while todo:
        name = todo.pop()
        if name in tree:
            continue
        tree.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    assert tree == LOCK.keys()


def test_the_package_floors_admit_the_locked_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert requirement.specifier.contains(LOCK[name]), (line, LOCK[name])
