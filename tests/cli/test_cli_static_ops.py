"""`--static-ops` picks the op set of `--quant q-static-int8` graphs, for export and quantize."""

from __future__ import annotations

import argparse
from types import ModuleType

import pytest

from edge.cli import export as export_cli
from edge.cli import quantize as quantize_cli
from edge.cli.quant_options import export_config


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
