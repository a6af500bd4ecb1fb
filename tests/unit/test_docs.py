"""The docs stay true to the repository: every alarm the template creates has its runbook
section in docs/operations.md, every relative link in the README and docs/ resolves, and no
tracked file names a file outside the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from devkit.harness import load_template

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def alarm_names() -> list[str]:
    """Each alarm's name after the stack's: `${AWS::StackName}-dead-letters` -> dead-letters."""
    resources = load_template(ROOT / "template.yaml")["Resources"]
    names = []
    for resource in resources.values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            name = resource["Properties"]["AlarmName"]
            text = name["Fn::Sub"] if isinstance(name, dict) else name
            names.append(text.removeprefix("${AWS::StackName}-"))
    return names


def test_the_template_has_alarms_to_check() -> None:
    assert len(alarm_names()) >= 10


@pytest.mark.parametrize("alarm", alarm_names())
def test_every_alarm_has_its_runbook_section(alarm: str) -> None:
    runbook = (ROOT / "docs" / "operations.md").read_text()
    assert f"### `S-{alarm}`:" in runbook


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert path.exists(), f"{doc.name}: {target} does not exist"


def test_nothing_names_a_file_outside_the_repository() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(  # noqa: S603 (git, listing this checkout)
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    outside = re.compile(r"\.\./shared|\bDESIGN\.md\b|development[ ](?:machine|VM)")
    found = []
    for name in filter(None, tracked):
        path = ROOT / name
        if path.suffix in {".png", ".svg", ".zip", ".gz"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}: {m.group(0)}" for m in outside.finditer(text)]
    assert found == []
