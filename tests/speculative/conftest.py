"""Tiny random Llama/Qwen2 checkpoints exported to edge packages, for speculative decoding.

The approach of tests/exporters/test_parity_tiny.py (a byte-level BPE trained on a few
sentences, seeded random checkpoints, saved as Hugging Face folders and exported), copied
rather than imported: fixtures of a test module are not shared across folders, and importing
a test module by path would load it twice under two names.

Packages are exported once per session and cached by (arch, seed, vocab, tokenizer), so a
target and its drafts, and the small-vocabulary models of the sampling tests, cost one
export each (~0.3 s).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edge.model import Model  # noqa: E402
from edge.package import open_package  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Edge devices run small language models locally, without a server.",
    "A tokenizer splits text into tokens, and a model predicts the next one.",
    "Rotary embeddings rotate queries and keys by an angle that grows with position.",
    "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
]
# A second tokenizer for the mismatch test: other text, other vocabulary size.
OTHER_SENTENCES = [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "Pack my box with five dozen liquor jugs.",
]
PROMPT_TEXT = " ".join(SENTENCES)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ARCHS = ("llama", "qwen2")
TARGET_SEED = {"llama": 0, "qwen2": 1}
DRAFT_SEED = {"llama": 100, "qwen2": 101}

# (arch, seed, vocab_size or None for the tokenizer's, tokenizer name) -> package path
TinyFactory = Callable[..., Path]


def train_tokenizer(sentences: list[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on `sentences`, wrapped as transformers tokenizes it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def tiny_model(arch: str, vocab_size: int, seed: int) -> Any:
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
    return model.eval()


@pytest.fixture(scope="session")
def spec_tokenizers() -> dict[str, Any]:
    """ "main" (384 tokens, shared by targets and drafts) and "other" (a different vocabulary)."""
    return {"main": train_tokenizer(SENTENCES, 384), "other": train_tokenizer(OTHER_SENTENCES, 320)}


@pytest.fixture(scope="session")
def tiny_factory(
    spec_tokenizers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> TinyFactory:
    """`make(arch, seed, vocab_size=None, tokenizer="main") -> package path`, cached.

    `vocab_size` smaller than the tokenizer's gives a model that only ever produces the first
    `vocab_size` ids (the sampling tests want a small vocabulary, so that an empirical
    distribution over all tokens needs few samples); prompts must then use ids below it.
    """
    from exporters.export import export

    cache: dict[tuple[str, int, int | None, str], Path] = {}

    def make(arch: str, seed: int, vocab_size: int | None = None, tokenizer: str = "main") -> Path:
        key = (arch, seed, vocab_size, tokenizer)
        if key not in cache:
            hf_tokenizer = spec_tokenizers[tokenizer]
            model = tiny_model(arch, vocab_size or len(hf_tokenizer), seed)
            root = tmp_path_factory.mktemp(f"spec-{arch}-{seed}-{vocab_size}-{tokenizer}")
            model.save_pretrained(root / "hf", safe_serialization=True)
            hf_tokenizer.save_pretrained(root / "hf")
            cache[key] = export(root / "hf", root / "pkg", progress=False)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def spec_prompt_ids(spec_tokenizers: dict[str, Any]) -> list[int]:
    """The first 20 tokens of PROMPT_TEXT under the main tokenizer."""
    ids = spec_tokenizers["main"](PROMPT_TEXT)["input_ids"]
    assert len(ids) >= 20
    return ids[:20]


@pytest.fixture(scope="session")
def load_tiny() -> Callable[..., Model]:
    """`load(package, max_context=None, draft=None, speculative=None) -> Model` on one thread
    (the tests run many tiny steps, where more threads only add overhead)."""
    from edge.engine import EngineConfig

    def load(package: Path, max_context: int | None = None, **kwargs: Any) -> Model:
        return Model(
            open_package(package), EngineConfig(threads=1, max_context=max_context), **kwargs
        )

    return load


@pytest.fixture(scope="module", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def target(arch: str, tiny_factory: TinyFactory) -> Path:
    """The tiny target package of `arch`."""
    return tiny_factory(arch, TARGET_SEED[arch])


@pytest.fixture(scope="module")
def other(arch: str, tiny_factory: TinyFactory) -> Path:
    """Another random model of the same family and tokenizer: a poor but valid draft."""
    return tiny_factory(arch, DRAFT_SEED[arch])
