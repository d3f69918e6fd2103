"""How much RAM the machine has and how much this process may really use.

On a Pi or a phone the whole model plan hinges on this number, and inside a container the host's
MemTotal is a lie: the cgroup limit is the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devices.cgroups import memory_limit


@dataclass(frozen=True)
class MemoryInfo:
    """System RAM in bytes, and the container limit when one applies."""

    total: int
    available: int
    cgroup_limit: int | None = None
    cgroup_usage: int | None = None

    def __post_init__(self) -> None:
        if self.total <= 0:
            raise ValueError(f"MemoryInfo.total must be > 0 bytes, got {self.total}")
        if not 0 <= self.available <= self.total:
            raise ValueError(
                f"MemoryInfo.available must be in [0, {self.total}], got {self.available}"
            )

    @property
    def budget(self) -> int:
        """Bytes a new allocation can take now: available RAM, capped by cgroup headroom."""
        if self.cgroup_limit is None:
            return self.available
        headroom = self.cgroup_limit - (self.cgroup_usage or 0)
        return max(0, min(self.available, headroom))


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per field ("MemTotal: 8000000 kB" -> 8192000000)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            values[key.strip()] = int(fields[0]) * scale
    return values


def read_memory(root: Path = Path("/"), *, host: bool = True) -> MemoryInfo:
    """RAM from `root`/proc/meminfo (psutil where there is no /proc), plus the cgroup limit."""
    path = root / "proc/meminfo"
    info = parse_meminfo(path.read_text()) if path.is_file() else {}
    if "MemTotal" in info:
        total = info["MemTotal"]
        # Kernels before 3.14 lack MemAvailable; free + page cache is the old approximation.
        available = info.get("MemAvailable", info.get("MemFree", 0) + info.get("Cached", 0))
    elif host:
        import psutil

        vm = psutil.virtual_memory()
        total, available = vm.total, vm.available
    else:
        raise FileNotFoundError(f"{path} is missing and the root is not this machine's")
    limit, usage = memory_limit(root)
    return MemoryInfo(total, min(available, total), limit, usage)
