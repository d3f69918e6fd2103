"""Container limits (cgroup v1 and v2): the real memory and CPU budget inside Docker or k8s.

psutil reports the host's RAM; a container may be allowed a fraction of it, and exceeding the
cgroup's limit gets the process killed, not swapped. So the budget is read from the cgroup
files, for this process's own cgroup and every ancestor (a parent's limit applies too).
"""

from __future__ import annotations

from pathlib import Path

# v1 reports "no limit" as a huge page-rounded number (0x7FFFFFFFFFFFF000 on x86).
UNLIMITED_V1 = 1 << 60


def own_cgroup_paths(root: Path) -> dict[str, str]:
    """Controller -> cgroup path of this process, from /proc/self/cgroup ("" is v2's)."""
    path = root / "proc/self/cgroup"
    paths: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return paths
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(","):
            paths[controller] = parts[2]
    return paths


def candidate_dirs(mount: Path, own: str | None) -> list[Path]:
    """The process's cgroup directory and its ancestors up to `mount`, deepest first.

    Inside a cgroup namespace /proc/self/cgroup may name a host path that does not exist under
    the mount; only existing directories are returned, the mount itself last.
    """
    dirs: list[Path] = []
    if own:
        rel = Path(own.lstrip("/"))
        for depth in range(len(rel.parts), 0, -1):
            candidate = mount.joinpath(*rel.parts[:depth])
            if candidate.is_dir():
                dirs.append(candidate)
    if mount.is_dir():
        dirs.append(mount)
    return dirs


def _read_limit(path: Path) -> int | None:
    """A limit file's value in bytes, None for "max", unlimited, missing or unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.lstrip("-").isdigit():
        return None
    value = int(text)
    return None if value <= 0 or value >= UNLIMITED_V1 else value


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def memory_limit(root: Path = Path("/")) -> tuple[int | None, int | None]:
    """(limit, usage) in bytes of the tightest memory cgroup over this process, or Nones.

    Usage is the charge of the cgroup that holds the limit, since headroom = limit - usage.
    """
    own = own_cgroup_paths(root)
    base = root / "sys/fs/cgroup"
    layouts = (
        (base / "memory", own.get("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"),
        (base, own.get(""), "memory.max", "memory.current"),
    )
    best: tuple[int | None, int | None] = (None, None)
    for mount, own_path, limit_name, usage_name in layouts:
        for directory in candidate_dirs(mount, own_path):
            limit = _read_limit(directory / limit_name)
            if limit is not None and (best[0] is None or limit < best[0]):
                best = (limit, _read_int(directory / usage_name))
    return best


def cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time the tightest cgroup allows (v2 cpu.max, v1 cfs quota / period)."""
    own = own_cgroup_paths(root)
    base = root / "sys/fs/cgroup"
    quotas: list[float] = []
    for directory in candidate_dirs(base, own.get("")):
        fields = _text(directory / "cpu.max").split()
        if len(fields) == 2 and fields[0] != "max" and fields[1].isdigit() and int(fields[1]):
            quotas.append(int(fields[0]) / int(fields[1]))
    for mount in (base / "cpu", base / "cpu,cpuacct"):
        for directory in candidate_dirs(mount, own.get("cpu")):
            quota = _read_int(directory / "cpu.cfs_quota_us")
            period = _read_int(directory / "cpu.cfs_period_us")
            if quota and quota > 0 and period:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
