"""Fixtures for the home cluster: a tiny random Llama package, key stores, worker processes.

Workers are real processes (`python -m edge.cli.main cluster serve`) on loopback, each with
its own config folder (its keys), paired with a coordinator key store through the real
pairing handshake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq")

from edge.cluster.keys import KeyStore
from edge.cluster.pairing import PairingServer, join

REPO = Path(__file__).resolve().parents[2]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Edge devices run small language models locally, without a server.",
]


def build_tiny_package(root: Path, **tokenizer_options: Any) -> Path:
    """A random 4-block Llama (hidden 64, GQA 4:2) exported to an fp32 edge package in `root`;
    `tokenizer_options` go to the Hugging Face tokenizer (a chat template, ...)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from exporters.export import export

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        **tokenizer_options,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "hf", safe_serialization=True)
    tokenizer.save_pretrained(root / "hf")
    return export(root / "hf", root / "pkg", progress=False)


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_package(tmp_path_factory.mktemp("cluster-tiny"))


@dataclass
class WorkerProcess:
    """A running `edge cluster serve` and what a coordinator needs to reach it."""

    proc: subprocess.Popen
    endpoint: str
    node_id: str
    public: str
    config_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pair(coordinator: KeyStore, cluster: str, worker: KeyStore, code: str | None = None) -> None:
    """Run the real pairing handshake over loopback (the server in a thread)."""
    server = PairingServer(coordinator, cluster, "tcp://127.0.0.1:0")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(paired=server.serve(20)))
    thread.start()
    try:
        join(worker, server.endpoints[0], code or server.code)
    finally:
        thread.join(30)
    assert "paired" in result


@pytest.fixture
def coordinator(tmp_path: Path) -> KeyStore:
    """A coordinator's key store with cluster "home" initialised."""
    store = KeyStore(tmp_path / "coordinator")
    store.init_cluster("home")
    return store


@pytest.fixture
def start_worker(tiny_package: Path, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """`start(paired_with=coordinator_store or None, *extra_args, package=tiny_package)`;
    `again=worker` starts a stopped worker anew with its keys, pairing and port."""
    started: list[WorkerProcess] = []

    def start(
        paired_with: KeyStore | None = None,
        *extra: str,
        package: Path | None = None,
        again: WorkerProcess | None = None,
    ) -> WorkerProcess:
        config_dir = again.config_dir if again else tmp_path / f"worker{len(started)}"
        store = KeyStore(config_dir)
        node_id, keys = store.node()
        if paired_with is not None and again is None:
            pair(paired_with, "home", store)
        listen = again.endpoint.removeprefix("tcp://") if again else "127.0.0.1:0"
        env = {**os.environ, "EDGE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.cli.main",
                "cluster",
                "serve",
                str(package or tiny_package),
                "--listen",
                listen,
                "--no-advertise",
                "--no-profile",
                "--threads",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("serving"):
            proc.kill()
            raise AssertionError(f"worker did not start: {line}{proc.stderr.read()}")
        worker = WorkerProcess(proc, line.split()[-1], node_id, keys.public, config_dir)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
