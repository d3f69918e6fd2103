"""The export a user gets without asking follows what they pulled (exporters/defaults.py):
the real SmolLM2 file (Q4_1 blocks) gives int4 with AWQ and zero points, a Q4_0 file its own
bits repacked, and a Hugging Face folder float32; `--quant none` asks for float32."""

from __future__ import annotations

from pathlib import Path

from edge.cli.main import build_parser
from edge.cli.quant_options import export_config
from exporters.defaults import default_export_config, weight_types
from exporters.export import ExportConfig


def test_a_q4_1_file_exports_to_calibrated_asymmetric_int4(smollm2_gguf: Path) -> None:
    assert weight_types(smollm2_gguf).most_common(1)[0][0] == "Q4_1"
    assert default_export_config(smollm2_gguf) == ExportConfig(
        quant="int4", method="awq", symmetric=False
    )


def test_a_q4_0_file_keeps_its_bits(smollm2_q4_0_gguf: Path) -> None:
    assert default_export_config(smollm2_q4_0_gguf) == ExportConfig(quant="int4")


def test_folders_and_unreadable_files_stay_float32(tmp_path: Path) -> None:
    assert default_export_config(tmp_path) == ExportConfig()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    assert default_export_config(broken) == ExportConfig()


def test_cli_defaults(smollm2_gguf: Path) -> None:
    """`edge export` with no --quant follows the file, --quant none is float32, and --quant
    int4 alone calibrates (--method rtn rounds)."""

    def config(*options: str) -> ExportConfig:
        args = build_parser().parse_args(["export", str(smollm2_gguf), "-o", "x", *options])
        return export_config(args, str(smollm2_gguf))

    assert config() == default_export_config(smollm2_gguf)
    assert config("--quant", "none") == ExportConfig()
    assert config("--quant", "int4").method == "awq"
    assert config("--quant", "int4", "--method", "rtn").method == "rtn"
    assert config("--quant", "int8").method == "rtn"
