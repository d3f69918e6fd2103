"""The numpy calibration forward is the same model as the ONNX graphs; AWQ helps int4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edge
from edge.evaluate import PerplexityConfig, default_corpus, perplexity
from exporters.arch import get_architecture
from exporters.awq_export import embed_rows
from exporters.calibration import block_forward, rms_norm
from exporters.export import ExportConfig, quantize_package
from exporters.sources import open_source


def test_numpy_forward_matches_the_engine(smollm2_package: Path) -> None:
    """Calibration activations come from the same math the engine runs (logits within 1e-3)."""
    source = open_source(smollm2_package)
    arch = get_architecture(source.architecture)
    spec = arch.spec(source.config())
    model = edge.load(smollm2_package, progress=False)
    ids = model.tokenizer.encode("Calibration must see what inference computes.")
    hidden = embed_rows(source, ids, spec.vocab_size)
    for i in range(spec.num_layers):
        dense = {n: w.fp32().T for n, w in arch.block_linears(source, spec, i).items()}
        hidden, _ = block_forward(hidden, spec, arch.block_vectors(source, spec, i), dense, i)
    normed = rms_norm(hidden, source.read("output_norm.weight"), spec.rms_norm_eps)
    logits = normed @ source.read("token_embd.weight").T
    np.testing.assert_allclose(model.engine.prefill(ids, all_logits=True), logits, atol=1e-3)


@pytest.mark.slow  # 25 s of AWQ calibration over SmolLM2 (README lists it)
def test_awq_beats_round_to_nearest(
    smollm2_package: Path, smollm2_int4_rtn: Path, tmp_path: Path
) -> None:
    """AWQ-calibrated int4 has lower perplexity than plain int4 on text it was not fitted on."""
    config = PerplexityConfig(window=256, stride=128, max_tokens=512)
    results = {}
    for method in ("rtn", "awq"):
        out = (
            smollm2_int4_rtn
            if method == "rtn"
            else quantize_package(
                smollm2_package,
                tmp_path / method,
                ExportConfig(quant="int4", method=method, calibration_tokens=128),
                progress=False,
            )
        )
        model = edge.load(out, progress=False)
        ids = model.tokenizer.encode(default_corpus()[:10000], add_special_tokens=False)
        results[method] = perplexity(model.engine, ids, config).perplexity
        record = model.package.manifest.quantization
        assert record["method"] == method
    assert results["awq"] < results["rtn"]
    for name in ("blk.0.attn_qkv.weight", "blk.29.ffn_down.weight"):
        assert record["tensors"][name]["from"].endswith("from F32 with AWQ scaling")
        assert record["tensors"][name]["from"].count("AWQ") == 1
