"""devkit.cpu_share: the bench holds itself to the CPU Lambda gives its memory, where it can."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from devkit.cpu_share import CGROUP_ROOT, cpu_share, vcpus_for


def test_lambda_gives_one_vcpu_at_1769_mb_and_in_proportion() -> None:
    assert vcpus_for(1769) == 1.0
    assert round(vcpus_for(1024), 2) == 0.58
    assert round(vcpus_for(10240), 2) == 5.79


def test_a_machine_without_a_cpu_controller_holds_nothing(tmp_path: Path) -> None:
    with cpu_share(0.5, root=tmp_path) as held:
        assert held is None
    assert list(tmp_path.iterdir()) == []


def _fake_proc(tmp_path: Path, cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "task" / str(os.getpid())).mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_cgroup_v2_gets_a_quota_of_its_own_and_the_process_goes_back_after(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    (root / "bench").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    proc = _fake_proc(tmp_path, "0::/bench\n")
    group = root / "bench" / f"meter-relay-bench-{os.getpid()}"
    with cpu_share(0.58, root=root, proc=proc) as held:
        assert held == 0.58
        assert (group / "cpu.max").read_text() == "58000 100000"
        assert (root / "bench" / "cgroup.subtree_control").read_text() == "+cpu"
        assert (group / "cgroup.procs").read_text() == str(os.getpid())
    assert (root / "bench" / "cgroup.procs").read_text() == str(os.getpid())


def test_a_group_it_cannot_make_holds_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    (root / "cpu" / "busy").write_text("")  # not a directory: no group can be made in it
    proc = _fake_proc(tmp_path, "1:cpu:/busy\n")
    with cpu_share(0.5, root=root, proc=proc) as held:
        assert held is None


def test_a_quota_it_cannot_set_holds_nothing_and_leaves_the_process_where_it_was(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu\n")
    proc = _fake_proc(tmp_path, "0::/\n")
    (root / f"meter-relay-bench-{os.getpid()}" / "cpu.max").mkdir(parents=True)  # refuses
    with cpu_share(0.5, root=root, proc=proc) as held:
        assert held is None
    assert (root / "cgroup.procs").read_text() == str(os.getpid())


def _cpu_group() -> str:
    line = next(
        line
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if "cpu" in line.split(":")[1].split(",")
    )
    return line.split(":", 2)[2]


@pytest.mark.skipif(
    not os.access(CGROUP_ROOT / "cpu" / "tasks", os.W_OK),
    reason="needs a writable cgroup v1 CPU controller (root), as on the project's machines",
)
def test_on_this_machine_every_thread_is_held_inside_and_let_go_after() -> None:
    home = _cpu_group()
    seen: list[str] = []
    with cpu_share(0.25) as held:
        assert held == 0.25
        inside = _cpu_group()
        group = CGROUP_ROOT / "cpu" / inside.lstrip("/")
        assert inside.endswith(f"meter-relay-bench-{os.getpid()}")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "25000"
        thread = threading.Thread(target=lambda: seen.append(_cpu_group()))
        thread.start()
        thread.join()
    assert seen == [inside]  # a thread started inside is held too
    assert _cpu_group() == home
    assert not group.exists()
