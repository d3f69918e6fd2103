"""Parity of exported tiny random Llama and Qwen2 checkpoints against Hugging Face transformers.

Each model is randomly initialised (seeded), saved as a Hugging Face folder (safetensors plus a
byte-level BPE tokenizer trained here), exported through `exporters.export.export` and run by the
`Engine`; transformers on the same weights (torch CPU, float32) is the reference.

Tolerances: both sides compute in float32, so they differ only in summation order (blocked
MatMul, the fused attention kernel's softmax, fused RMSNorm), each op contributing ~1e-7
relative error; over three layers, with logits of magnitude ~5, that is ~1e-5 (we observe
<= 1e-5). `LOGITS_ATOL = 1e-4` leaves ten times that headroom while a real bug (a missing bias,
a wrong rope layout, an untied head read from the embedding) moves logits by 0.1 or more.
Run-time invariances of one package (partitioning, chunking, decode vs prefill) only change
kernel shapes, hence `INVARIANCE_ATOL = 1e-5`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edge.engine import Engine, EngineConfig  # noqa: E402
from edge.format import read_manifest  # noqa: E402
from edge.package import open_package  # noqa: E402
from exporters.export import ExportConfig, export  # noqa: E402
from exporters.layout import write_layout  # noqa: E402
from tests.exporters.test_export_layout import layout_of  # noqa: E402

LOGITS_ATOL = 1e-4
INVARIANCE_ATOL = 1e-5
PROMPT_TOKENS = 20
NEW_TOKENS = 64
ARCHS = ("llama", "qwen2")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Edge devices run small language models locally, without a server.",
    "A tokenizer splits text into tokens, and a model predicts the next one.",
    "Rotary embeddings rotate queries and keys by an angle that grows with position.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
]
PROMPT_TEXT = " ".join(SENTENCES)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---- fixtures: tokenizer, tiny checkpoints, exported packages ----------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    """A byte-level BPE trained on a few sentences, wrapped as transformers tokenizes it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def _tiny_model(arch: str, vocab_size: int, seed: int) -> Any:
    """A random fp32 model; Qwen2 gets non-zero q/k/v biases (HF initialises them to zero)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.5)
    # Greedy runs must not stop early: no EOS for generate().
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _save_and_export(model: Any, tokenizer: Any, root: Path) -> Path:
    folder = root / "hf"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return export(folder, root / "pkg", progress=False)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(
    request: pytest.FixtureRequest, hf_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path]:
    """(transformers fp32 model, exported package path) for one architecture."""
    arch = request.param
    model = _tiny_model(arch, len(hf_tokenizer), seed=ARCHS.index(arch))
    return model, _save_and_export(model, hf_tokenizer, tmp_path_factory.mktemp(f"tiny-{arch}"))


@pytest.fixture(scope="module")
def prompt_ids(hf_tokenizer: Any) -> list[int]:
    ids = hf_tokenizer(PROMPT_TEXT)["input_ids"]
    assert len(ids) >= PROMPT_TOKENS
    return ids[:PROMPT_TOKENS]


# ---- helpers ------------------------------------------------------------------------------------


def _engine(package: Path, **config: Any) -> Engine:
    return Engine(open_package(package), EngineConfig(threads=1, **config))


def _hf_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _edge_greedy(engine: Engine, ids: list[int], n: int) -> list[int]:
    engine.reset()
    logits = engine.prefill(ids)[-1]
    tokens = []
    for _ in range(n):
        tokens.append(int(np.argmax(logits)))
        logits = engine.decode(tokens[-1])
    return tokens


def _hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=int),
        do_sample=False,
        max_new_tokens=n,
    )
    return out[0, len(ids) :].tolist()


# ---- tests --------------------------------------------------------------------------------------


def test_spec_reflects_checkpoint(tiny: tuple[Any, Path]) -> None:
    """The export read the bias/tying flags: otherwise the parity below proves less."""
    model, package = tiny
    pkg = open_package(package)
    spec, config = pkg.spec, model.config
    assert spec.architecture == config.model_type
    assert spec.attention_bias == (config.model_type == "qwen2")
    assert spec.tie_word_embeddings == config.tie_word_embeddings
    head = {t.name for t in pkg.manifest.part("head").tensors}
    assert ("output.weight" in head) != config.tie_word_embeddings
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (3, 4, 2, 16)


def test_prompt_logits_match_transformers(tiny: tuple[Any, Path], prompt_ids: list[int]) -> None:
    """All 20 positions' logits within LOGITS_ATOL (1e-4) of transformers (see module doc)."""
    model, package = tiny
    expected = _hf_logits(model, prompt_ids)
    actual = _engine(package).prefill(prompt_ids, all_logits=True)
    assert actual.shape == expected.shape == (PROMPT_TOKENS, model.config.vocab_size)
    assert np.abs(expected).max() > 1.0, "logits are flat: the test would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=LOGITS_ATOL)


def test_qwen2_bias_matters(hf_tokenizer: Any, prompt_ids: list[int]) -> None:
    """Control: dropping the q/k/v biases moves logits far beyond LOGITS_ATOL."""
    model = _tiny_model("qwen2", len(hf_tokenizer), seed=ARCHS.index("qwen2"))
    with_bias = _hf_logits(model, prompt_ids)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.zero_()
    assert np.abs(_hf_logits(model, prompt_ids) - with_bias).max() > 1000 * LOGITS_ATOL


def test_greedy_matches_generate(tiny: tuple[Any, Path], prompt_ids: list[int]) -> None:
    """64 greedy tokens equal transformers' generate(do_sample=False) with EOS disabled."""
    model, package = tiny
    expected = _hf_greedy(model, prompt_ids, NEW_TOKENS)
    assert len(expected) == NEW_TOKENS
    actual = _edge_greedy(_engine(package), prompt_ids, NEW_TOKENS)
    first_diff = next((i for i, (a, b) in enumerate(zip(actual, expected)) if a != b), None)
    assert actual == expected, f"greedy tokens diverge at step {first_diff}"


def test_partitioned_matches_single_session(tiny: tuple[Any, Path], prompt_ids: list[int]) -> None:
    """One session per part (embed, 3 blocks, head) computes what one merged session does."""
    _, package = tiny
    merged, split = _engine(package), _engine(package, parts_per_session=1)
    assert len(merged.segments) == 1
    assert len(split.segments) == 5
    np.testing.assert_allclose(
        split.prefill(prompt_ids, all_logits=True),
        merged.prefill(prompt_ids, all_logits=True),
        rtol=0,
        atol=INVARIANCE_ATOL,
    )
    for token in prompt_ids[:5]:
        np.testing.assert_allclose(
            split.decode(token), merged.decode(token), rtol=0, atol=INVARIANCE_ATOL
        )


def test_chunked_prefill_matches_one_shot(tiny: tuple[Any, Path], prompt_ids: list[int]) -> None:
    """prefill_chunk=3 (20 tokens: six full chunks and a ragged one) equals one-shot prefill."""
    _, package = tiny
    one_shot = _engine(package).prefill(prompt_ids, all_logits=True)
    chunked = _engine(package, prefill_chunk=3)
    np.testing.assert_allclose(
        chunked.prefill(prompt_ids, all_logits=True), one_shot, rtol=0, atol=INVARIANCE_ATOL
    )
    assert chunked.position == PROMPT_TOKENS
    chunked.reset()
    last = chunked.prefill(prompt_ids)
    assert last.shape == (1, one_shot.shape[1])
    np.testing.assert_allclose(last[0], one_shot[-1], rtol=0, atol=INVARIANCE_ATOL)


def test_decode_steps_match_all_logits_prefill(
    tiny: tuple[Any, Path], prompt_ids: list[int]
) -> None:
    """Prefill 5 tokens then decode the other 15 one by one: same logits as one prefill."""
    _, package = tiny
    engine = _engine(package)
    whole = engine.prefill(prompt_ids, all_logits=True)
    engine.reset()
    stepped = [engine.prefill(prompt_ids[:5])[0]]
    stepped += [engine.decode(token).copy() for token in prompt_ids[5:]]
    assert engine.position == PROMPT_TOKENS
    np.testing.assert_allclose(np.stack(stepped), whole[4:], rtol=0, atol=INVARIANCE_ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_checkpoint(
    arch: str, hf_tokenizer: Any, prompt_ids: list[int], tmp_path: Path
) -> None:
    """A bf16 safetensors checkpoint exports and matches fp32 transformers on the same
    bf16-rounded weights (bf16 -> fp32 is exact, so LOGITS_ATOL still applies).

    The reference is reloaded from the folder in float32 rather than `model.float()`: casting
    the module to bf16 also rounds its rotary `inv_freq` buffer, which `.float()` cannot undo
    (that alone moves logits by ~0.03).
    """
    import json

    from transformers import AutoModelForCausalLM

    model = _tiny_model(arch, len(hf_tokenizer), seed=10 + ARCHS.index(arch))
    package = _save_and_export(model.to(torch.bfloat16), hf_tokenizer, tmp_path)
    raw = (tmp_path / "hf" / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    np.testing.assert_allclose(
        _engine(package).prefill(prompt_ids, all_logits=True),
        _hf_logits(reference, prompt_ids),
        rtol=0,
        atol=LOGITS_ATOL,
    )


@pytest.mark.parametrize("quant", [None, "int4"])
def test_a_checkpoints_layout_is_its_export(
    tiny: tuple[Any, Path], quant: str | None, tmp_path: Path
) -> None:
    """`edge plan` on a Hugging Face folder plans on `exporters.layout`, read from the
    safetensors headers: the export's parts and sizes (Qwen2's biases too)."""
    _, package = tiny
    config = ExportConfig(quant=quant)
    (tmp_path / "layout").mkdir()
    laid_out = write_layout(package.parent / "hf", tmp_path / "layout", config)
    exported = package if quant is None else export(package.parent / "hf", tmp_path / "q", config)
    assert layout_of(read_manifest(laid_out)) == layout_of(read_manifest(exported))
