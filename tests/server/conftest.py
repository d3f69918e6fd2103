"""A tiny random Llama exported to an edge package, and real servers on loopback around it.

The model is the approach of tests/speculative/conftest.py (a byte-level BPE trained on a few
sentences, a seeded random checkpoint, exported), copied rather than imported: fixtures of a
test folder are not shared with another. It generates ~1 ms per token on one thread, so the
tests exercise the real server, engine and client quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from edge.engine import EngineConfig  # noqa: E402
from edge.model import Model  # noqa: E402
from edge.package import open_package  # noqa: E402
from edge.server import BackgroundServer, ServeConfig  # noqa: E402
from edge.server.config import model_id  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Edge devices run small language models locally, without a server.",
    "A tokenizer splits text into tokens, and a model predicts the next one.",
    "Rotary embeddings rotate queries and keys by an angle that grows with position.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTEXT = 256
API_KEY = "test-key-0123456789"


def _tokenizer() -> Any:
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


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-block Llama (hidden 64, vocabulary 384) as an edge package named 'tiny'."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from exporters.export import export

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.2,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    ).eval()
    root = tmp_path_factory.mktemp("serve")
    model.save_pretrained(root / "hf", safe_serialization=True)
    tokenizer.save_pretrained(root / "hf")
    return export(root / "hf", root / "tiny", progress=False)


def load_options() -> dict[str, Any]:
    return {"max_context": CONTEXT, "threads": 1, "progress": False}


StartServer = Callable[..., BackgroundServer]


@pytest.fixture
def start_server(tiny_package: Path) -> Iterator[StartServer]:
    """`start(**ServeConfig fields, loaders=None) -> a running server on 127.0.0.1:<free port>`
    serving the tiny package; every server started is stopped after the test."""
    started: list[BackgroundServer] = []

    def start(
        loaders: dict[str, Callable[[], Any]] | None = None, **fields: Any
    ) -> BackgroundServer:
        fields.setdefault("models", (str(tiny_package),))
        fields.setdefault("load", load_options())
        server = BackgroundServer(ServeConfig(port=0, **fields), loaders=loaders).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tiny_package: Path) -> Iterator[BackgroundServer]:
    """One ready server for the tests that only send requests (queue of 8, no key)."""
    config = ServeConfig(models=(str(tiny_package),), port=0, load=load_options())
    with BackgroundServer(config) as server:
        server.wait_ready(60)
        yield server


@pytest.fixture(scope="module")
def tiny_id(tiny_package: Path) -> str:
    return model_id(str(tiny_package))


@pytest.fixture(scope="session")
def make_client() -> Callable[..., Any]:
    """`make(server or its URL, api_key="unused") -> the official OpenAI client on it`,
    without retries (a 429 or 503 must reach the test, not be retried away)."""

    def make(server: BackgroundServer | str, api_key: str = "unused", **kwargs: Any) -> Any:
        url = server if isinstance(server, str) else server.url
        return openai.OpenAI(
            base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs
        )

    return make


@pytest.fixture(scope="module")
def sdk(tiny_package: Path) -> Model:
    """The same package through the SDK directly: what the server must reproduce."""
    return Model(open_package(tiny_package), EngineConfig(threads=1, max_context=256))


@pytest.fixture(scope="module")
def api(shared_server: Any, make_client: Callable[..., Any]) -> Any:
    return make_client(shared_server)
