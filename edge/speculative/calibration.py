"""What the controller learned, kept on disk per target, draft and machine.

`edge run --draft ...` is one process per request: without memory, every run would spend its
first rounds (and a draft model's prompt prefill) finding out again that, say, the draft model
does not pay on this machine. The file holds costs and per-kind acceptance only: plain JSON,
checked on load; a missing, foreign or damaged file is ignored (with a log line), never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.paths import cache_dir
from edge.stamps import MAX_STAMP_BYTES, write_stamp

log = logging.getLogger("edge.speculative")

VERSION = 1


@dataclass
class Calibration:
    """Seconds per plain step, verification slope, seconds per drafted token of each kind,
    (accepted, trials) of each kind, seconds per token a draft model catches up on, and the
    best acceptance a whole request measured per kind."""

    plain_step: float | None = None
    verify_slope: float | None = None
    draft_token: dict[str, float] = field(default_factory=dict)
    acceptance: dict[str, tuple[float, float]] = field(default_factory=dict)
    catch_up_token: float | None = None
    best_seen: dict[str, float] = field(default_factory=dict)


def calibration_path(target_manifest: Path, draft: str, threads: int | None) -> Path:
    """Where the calibration of this target (by its manifest's bytes, which name every file's
    checksum), draft and thread count on this machine lives."""
    identity = hashlib.sha256(target_manifest.read_bytes())
    identity.update(f"|{draft}|{threads}|{platform.node()}|{platform.machine()}".encode())
    return cache_dir() / "speculative" / f"{identity.hexdigest()[:24]}.json"


def load_calibration(path: Path) -> Calibration | None:
    """The calibration stored at `path`, or None when it is missing, damaged or foreign."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STAMP_BYTES + 1)
        if len(raw) > MAX_STAMP_BYTES:
            raise ValueError(f"larger than {MAX_STAMP_BYTES} bytes")
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: deeply nested
        log.warning("ignoring unreadable speculative calibration %s: %s", path, error)
        return None
    try:
        return _parse(data)
    except (TypeError, ValueError, KeyError) as error:
        log.info("ignoring malformed speculative calibration %s: %s", path, error)
        return None


def save_calibration(path: Path, calibration: Calibration) -> None:
    """Write atomically (a reader never sees half a file); a full or read-only cache only warns,
    it must not fail the run that learned it."""
    write_stamp(path, {"version": VERSION, **asdict(calibration)})


def _number(value: object, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _optional(value: object, what: str) -> float | None:
    return None if value is None else _number(value, what)


def _parse(data: object) -> Calibration:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} calibration")
    draft_token = {
        str(k): _number(v, f"draft_token[{k}]") for k, v in dict(data["draft_token"]).items()
    }
    acceptance = {}
    for key, pair in dict(data["acceptance"]).items():
        accepted, trials = (_number(x, f"acceptance[{key}]") for x in pair)
        if accepted > trials:
            raise ValueError(f"acceptance[{key}]: {accepted} accepted of {trials} trials")
        acceptance[str(key)] = (accepted, trials)
    best_seen = {
        str(k): min(_number(v, f"best_seen[{k}]"), 1.0)
        for k, v in dict(data.get("best_seen", {})).items()
    }
    return Calibration(
        _optional(data["plain_step"], "plain_step"),
        _optional(data["verify_slope"], "verify_slope"),
        draft_token,
        acceptance,
        _optional(data.get("catch_up_token"), "catch_up_token"),
        best_seen,
    )
