"""The export a user gets without asking follows what they pulled (exporters/defaults.py):
the real SmolLM2 file (Q4_1 blocks) gives int4 with AWQ and zero points (blocks of 64 for a
wide model), a Q4_0 file its own bits repacked, and a Hugging Face folder float32; `--quant
none` asks for float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.cli.main import build_parser
from edge.cli.quant_options import export_config
from exporters.defaults import default_export_config
from exporters.export import ExportConfig


def test_a_q4_1_file_exports_to_calibrated_asymmetric_int4(smollm2_gguf: Path) -> None:
    gguf = pytest.importorskip("gguf")
    types = {t.tensor_type.name for t in gguf.GGUFReader(smollm2_gguf).tensors}
    assert "Q4_1" in types and "Q4_0" not in types
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


@pytest.mark.parametrize(("hidden", "block"), [(576, 32), (1536, 64)])
def test_wide_models_take_blocks_of_64(hidden: int, block: int, tmp_path: Path) -> None:
    """Re-quantized int4 takes blocks of 64 from a hidden size of 1536 (Qwen2.5-Coder-1.5B:
    1.08-1.11x decode for +1.2% perplexity), 32 below (SmolLM2 loses 5 points to 64)."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(tmp_path / "wide.gguf", "llama")
    writer.add_tensor("token_embd.weight", np.zeros((8, hidden), np.float32))
    q4_1 = gguf.GGMLQuantizationType.Q4_1
    weight = gguf.quants.quantize(np.ones((32, hidden), np.float32), q4_1)
    writer.add_tensor("blk.0.ffn_up.weight", weight, raw_dtype=q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert default_export_config(tmp_path / "wide.gguf") == ExportConfig(
        quant="int4", method="awq", symmetric=False, block_size=block
    )


def test_a_files_weights_are_read_once(smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edge run NAME` asks on every run whether its cached package is the default export:
    the GGUF's header (seconds to parse for a large vocabulary) is read once per file."""
    import exporters.defaults as defaults

    first = default_export_config(smollm2_gguf)

    def parse(path: Path) -> None:
        raise AssertionError(f"{path} parsed again")

    monkeypatch.setattr(defaults, "_parse", parse)
    assert default_export_config(smollm2_gguf) == first
