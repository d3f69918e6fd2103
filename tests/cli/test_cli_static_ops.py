"""`--static-ops` picks the op set of `--quant q-static-int8` graphs, for export and quantize."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from edge.cli import export as export_cli
from edge.cli import quantize as quantize_cli
from edge.cli.quant_options import export_config
from edge.errors import ConfigError
from exporters.export import ExportConfig


@pytest.mark.parametrize("command", [export_cli, quantize_cli])
def test_static_ops_reach_the_export_config(command: ModuleType) -> None:
    """Default "contrib" (today's graphs); "standard" asks for the standard-op graphs, which
    are the only ones `static-fp32` has."""
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    base = ["src", "-o", "out", "--quant", "q-static-int8", "--activation-bits", "8"]
    assert export_config(parser.parse_args(base)).static_ops == "contrib"
    config = export_config(parser.parse_args([*base, "--static-ops", "standard"]))
    assert (config.static_ops, config.static_activation_bits) == ("standard", 8)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--static-ops", "onnx"])
    floats = export_config(parser.parse_args(["src", "-o", "out", "--quant", "static-fp32"]))
    assert (floats.quant, floats.static_ops) == ("static-fp32", "standard")


def test_attention_bits_need_standard_static_int8_graphs() -> None:
    """`--attention-bits` reaches the config with `--static-ops standard` (default None: the
    attention products at `--activation-bits`, as before the option); elsewhere there are no
    quantized attention products to set, and both the CLI and the config say so."""
    parser = argparse.ArgumentParser()
    export_cli.configure_parser(parser)
    base = ["src", "-o", "out", "--quant", "q-static-int8", "--activation-bits", "8"]
    standard = [*base, "--static-ops", "standard"]
    assert export_config(parser.parse_args(standard)).static_attention_bits is None
    config = export_config(parser.parse_args([*standard, "--attention-bits", "16"]))
    assert (config.static_activation_bits, config.static_attention_bits) == (8, 16)
    for wrong in (base, ["src", "-o", "out", "--quant", "static-fp32", "--static-ops", "standard"]):
        with pytest.raises(ConfigError, match="--quant q-static-int8 --static-ops standard"):
            export_config(parser.parse_args([*wrong, "--attention-bits", "16"]))
    with pytest.raises(ValueError, match="static_ops='standard'"):
        ExportConfig(quant="q-static-int8", static_attention_bits=16)
    with pytest.raises(ValueError, match="8 or 16"):
        ExportConfig(quant="q-static-int8", static_ops="standard", static_attention_bits=4)


def test_contradicting_static_options_are_one_clear_error() -> None:
    """Options `ExportConfig` refuses together reach the user as a ConfigError (one line from
    the CLI), not a traceback."""
    parser = argparse.ArgumentParser()
    export_cli.configure_parser(parser)
    args = parser.parse_args(
        ["src", "-o", "out", "--quant", "static-fp32", "--static-ops", "contrib"]
    )
    with pytest.raises(ConfigError, match=r"do not go together: .*static_ops='contrib'"):
        export_config(args)
