"""A child memory cgroup to confine a process to a budget: what a phone or a Pi enforces.

cgroup v1 (`memory.limit_in_bytes`) or v2 (`memory.max`), created under this process's own
memory cgroup (so the machine's limits still apply) and removed afterwards. A command joins it
before it starts (`confined`), so everything it allocates and the page cache it faults in are
charged to it; the kernel reclaims page cache under the limit and OOM-kills only for memory it
cannot reclaim. Used by `tests/streaming/test_streaming_cgroup.py` and
`bench/bench_cgroup_anchor.py`.
"""

from __future__ import annotations

import time
from pathlib import Path


class NoCgroupError(RuntimeError):
    """This process may not create a memory cgroup (no hierarchy, no permission)."""


def confined(group: MemoryCgroup, command: list[str]) -> list[str]:
    """`command`, run by a shell that first moves itself into `group`."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs), *command]


class MemoryCgroup:
    """A child memory cgroup (v1 `memory.limit_in_bytes`, or v2 `memory.max`)."""

    def __init__(self, path: Path, v1: bool) -> None:
        self.path, self.v1 = path, v1

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def set_limit(self, nbytes: int) -> None:
        name = "memory.limit_in_bytes" if self.v1 else "memory.max"
        (self.path / name).write_text(str(nbytes))

    def limit(self) -> int:
        name = "memory.limit_in_bytes" if self.v1 else "memory.max"
        return int((self.path / name).read_text())

    def peak(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.v1 else "memory.peak"
        path = self.path / name
        return int(path.read_text()) if path.exists() else None

    def events(self) -> str:
        """Limit hits and OOM kills, for the report."""
        if self.v1:
            oom = (self.path / "memory.oom_control").read_text().split()
            return (
                f"failcnt {(self.path / 'memory.failcnt').read_text().strip()}, "
                f"oom_control {' '.join(oom)}"
            )
        return (self.path / "memory.events").read_text().replace("\n", ", ")

    def remove(self) -> None:
        for _ in range(50):  # the last process may take a moment to leave
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()


def own_cgroup(v1: bool) -> Path | None:
    """The cgroup this process is in, under the v1 memory hierarchy or the v2 one."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if v1 and "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
        if not v1 and controllers == "":
            return Path("/sys/fs/cgroup") / path.lstrip("/")
    return None


def make_cgroup(name: str) -> MemoryCgroup:
    """A writable child memory cgroup of this process's own (its limits still apply), or
    NoCgroupError saying why there is none."""
    reasons = []
    for v1, limit_file in ((True, "memory.limit_in_bytes"), (False, "memory.max")):
        parent = own_cgroup(v1)
        if parent is None or not parent.is_dir():
            reasons.append(f"cgroup {'v1' if v1 else 'v2'}: no memory hierarchy for this process")
            continue
        child = parent / name
        try:
            child.mkdir()
        except OSError as exc:
            reasons.append(f"cgroup {'v1' if v1 else 'v2'}: cannot create {child}: {exc}")
            continue
        if (child / limit_file).exists():
            return MemoryCgroup(child, v1)
        child.rmdir()
        reasons.append(
            f"cgroup {'v1' if v1 else 'v2'}: {child} has no {limit_file} "
            "(memory controller not enabled there)"
        )
    raise NoCgroupError("no writable memory cgroup: " + "; ".join(reasons))
