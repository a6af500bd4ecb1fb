"""Lambda's CPU for a memory size, on this machine, for the bench's figures at Stripe's latency.

Lambda gives a function CPU in proportion to its memory (1,769 MB is one vCPU; 1,024 MB about
0.58), and bills the wall time. On a machine's whole cores the forwarder parses a batch, and
gets its calls out, faster than a function of less than one vCPU does: the wall time it
measures would flatter the deployed one. `cpu_share(vcpus)` holds this process to that much
CPU with a quota of the kernel's CPU controller (a CFS quota, as Lambda's own sandboxes use),
where the machine lets it: cgroup v1 or v2, writable (root). Elsewhere it holds nothing and
says so, and the figures are for whole cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

MB_PER_VCPU = 1769  # Lambda: one vCPU at 1,769 MB, in proportion below and above
PERIOD_US = 100_000  # the kernel's default CFS period
CGROUP_ROOT = Path("/sys/fs/cgroup")


def vcpus_for(memory_mb: int) -> float:
    """The vCPU share Lambda gives a function of `memory_mb`."""
    return memory_mb / MB_PER_VCPU


@dataclass(frozen=True)
class _Hierarchy:
    """Where a cgroup version keeps the CPU quota and the members of a group."""

    root: Path  # the CPU controller's hierarchy
    members: str  # the file a member is written to
    by_thread: bool  # v1 moves threads (each one's id), v2 a whole process
    proc: Path  # /proc/self

    def current(self) -> Path:
        """This process's group in the hierarchy (/proc/self/cgroup's line for it)."""
        for line in (self.proc / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.by_thread and "cpu" in controllers.split(",")) or (
                not self.by_thread and controllers == ""
            ):
                return self.root / path.lstrip("/")
        raise OSError("this process is in no CPU cgroup")

    def limit(self, group: Path, vcpus: float) -> None:
        quota = max(1000, round(vcpus * PERIOD_US))
        if self.by_thread:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            with suppress(OSError):  # v2 shows cpu.max only where the parent hands cpu down
                (group.parent / "cgroup.subtree_control").write_text("+cpu")
            (group / "cpu.max").write_text(f"{quota} {PERIOD_US}")

    def move(self, group: Path) -> None:
        """This process, every thread of it, into `group` (threads started later follow)."""
        ids = sorted(os.listdir(self.proc / "task")) if self.by_thread else [str(os.getpid())]
        for member in ids:
            with suppress(ProcessLookupError):  # a thread that ended meanwhile
                (group / self.members).write_text(member)


def _hierarchy(root: Path, proc: Path) -> _Hierarchy | None:
    if (root / "cpu" / "cpu.cfs_quota_us").exists():
        return _Hierarchy(root / "cpu", "tasks", by_thread=True, proc=proc)
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return _Hierarchy(root, "cgroup.procs", by_thread=False, proc=proc)
    return None


@contextmanager
def cpu_share(
    vcpus: float, root: Path = CGROUP_ROOT, proc: Path = Path("/proc/self")
) -> Iterator[float | None]:
    """Hold this process to `vcpus` of CPU while inside: yields `vcpus` if held, None if the
    machine does not let it (no CPU controller, not writable), when nothing is held."""
    hierarchy = _hierarchy(root, proc)
    if hierarchy is None:
        yield None
        return
    try:
        home = hierarchy.current()
        group = home / f"meter-relay-bench-{os.getpid()}"
        group.mkdir(exist_ok=True)
    except OSError:
        yield None
        return
    try:
        hierarchy.limit(group, vcpus)
        hierarchy.move(group)
    except OSError:
        _leave(hierarchy, home, group)
        yield None
        return
    try:
        yield vcpus
    finally:
        _leave(hierarchy, home, group)


def _leave(hierarchy: _Hierarchy, home: Path, group: Path) -> None:
    """Back where the process was, and the group removed (the kernel refuses while it has
    members: a thread started inside that is still alive is moved with the others)."""
    with suppress(OSError):
        hierarchy.move(home)
    with suppress(OSError):
        group.rmdir()
