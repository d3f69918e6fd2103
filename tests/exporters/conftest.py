"""A real Q4_0 GGUF for the lossless-repack tests, written with the `gguf` package.

llama.cpp is not a dependency, so the Q4_0 file is made here the way llama.cpp's own
quantizer lays it out: the block matmuls of the real SmolLM2 re-quantized to Q4_0 with
`gguf.quants`, the Q8_0 embedding, norms and all metadata copied unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def write_q4_0_gguf(source: Path, target: Path) -> Path:
    import gguf
    from gguf import GGMLQuantizationType, GGUFValueType

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if tensor.name.startswith("blk.") and kind.name not in ("F32", "Q8_0"):
            values = gguf.quants.dequantize(tensor.data, kind)
            packed = gguf.quants.quantize(values, GGMLQuantizationType.Q4_0)
            writer.add_tensor(
                tensor.name, packed, raw_shape=packed.shape, raw_dtype=GGMLQuantizationType.Q4_0
            )
        else:
            data = np.array(tensor.data)
            writer.add_tensor(
                tensor.name,
                data,
                raw_dtype=kind,
                raw_shape=data.shape if kind.name == "F32" else None,
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


@pytest.fixture(scope="session")
def smollm2_q4_0_gguf(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("q4_0")
    return write_q4_0_gguf(smollm2_gguf, folder / "SmolLM2-135M-Instruct.Q4_0.gguf")


@pytest.fixture(scope="session")
def smollm2_int4_rtn(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 quantized to plain (round-to-nearest, symmetric) int4: judged on its own and
    as the baseline AWQ must beat."""
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("int4-rtn") / "pkg",
        ExportConfig(quant="int4", method="rtn"),
        progress=False,
    )
