"""Which single-board computer this is (device tree), and boards attached over serial ports.

ARM boards have no DMI; the kernel's device tree names the board ("Raspberry Pi 5 Model B
Rev 1.0", "NVIDIA Jetson Orin Nano Developer Kit") and its SoC ("brcm,bcm2712", "nvidia,tegra234").
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

# Substring of the device-tree model or compatible -> board family edge knows how to describe.
FAMILIES = (
    ("raspberry pi", "raspberry-pi"),
    ("nvidia jetson", "jetson"),
    ("nvidia,tegra", "jetson"),
    ("qcom,", "qualcomm"),
    ("qualcomm", "qualcomm"),
    ("rockchip", "rockchip"),
    ("amlogic", "amlogic"),
    ("allwinner", "allwinner"),
    ("mediatek", "mediatek"),
)


@dataclass(frozen=True)
class Board:
    """A board named by its device tree; `family` is "other" for ones edge has no profile for."""

    model: str
    family: str
    compatible: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("Board.model must be a non-empty string")


@dataclass(frozen=True)
class SerialPort:
    """A serial port (USB-UART of a microcontroller board, say): listed as information only."""

    device: str
    description: str
    hwid: str
    manufacturer: str | None = None


def _read_dt_string(path: Path) -> str:
    """Device-tree strings end in NUL; `compatible` holds several NUL-separated ones."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def read_board(root: Path = Path("/")) -> Board | None:
    """The board from `root`/proc/device-tree, or None (x86 PCs and most VMs have none)."""
    tree = root / "proc/device-tree"
    model = _read_dt_string(tree / "model").strip("\x00").strip()
    compatible = tuple(s for s in _read_dt_string(tree / "compatible").split("\x00") if s)
    if not model and not compatible:
        return None
    haystack = " ".join((model, *compatible)).lower()
    family = next((fam for needle, fam in FAMILIES if needle in haystack), "other")
    return Board(model=model or compatible[0], family=family, compatible=compatible)


def jetson_release(root: Path = Path("/")) -> str | None:
    """The first line of /etc/nv_tegra_release ("# R36 (release), REVISION: 4.0, ...") if any."""
    try:
        text = (root / "etc/nv_tegra_release").read_text(errors="replace")
    except OSError:
        return None
    return text.splitlines()[0].lstrip("# ").strip() if text.strip() else "unknown L4T release"


def serial_ports() -> tuple[SerialPort, ...] | None:
    """Serial ports via pyserial, or None when pyserial is not installed."""
    if importlib.util.find_spec("serial") is None:
        return None
    from serial.tools import list_ports

    return tuple(
        SerialPort(p.device, p.description or "", p.hwid or "", p.manufacturer)
        for p in sorted(list_ports.comports(), key=lambda p: p.device)
    )
