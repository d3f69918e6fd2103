"""GPU draft + CPU target: Dovetail's split, measured on a machine with an NVIDIA GPU.

    python bench/gpu_speculative.py --tokenizer TOKENIZER_JSON --out DIR [--small]

Real models cannot travel to the lent GPU machine (64 MiB), so this builds random-weight
Qwen2.5-Coder-0.5B- and 1.5B-shaped checkpoints there, exports both to int4 edge packages, and
measures: the target (edge's ONNX Runtime engine on the CPU) decode step and verification of
k+1 tokens; the draft (edge's PyTorch forward on CUDA) per drafted token; and one real
speculative run (output checked identical to the target's greedy output; random weights
accept almost nothing, so acceptance comes from the real pair measured on the CPU machine).
The speedup at a given acceptance a is then E(k) / (k * t_draft + t_verify(k)) x t_decode,
E(k) = (1 - a^(k+1)) / (1 - a); with PEARL's overlap the draft hides behind verification.
`--small` uses tiny shapes so the script can be checked on any machine first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SHAPES = {  # Qwen2.5-Coder configs (hidden, intermediate, layers, heads, kv heads)
    "draft": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "target": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
}
SMALL = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def make_checkpoint(folder: Path, shape: dict, tokenizer_json: Path, seed: int) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=shape["hidden_size"] < 1536,
        **shape,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    return folder


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def target_costs(package: Path, threads: int, max_k: int) -> dict:
    from edge.engine import Engine, EngineConfig
    from edge.package import open_package

    engine = Engine(open_package(package), EngineConfig(max_context=1024, threads=threads))
    engine.prefill(list(range(1000, 1128)))
    base = engine.position

    def step(n: int):
        engine.rewind(base)
        if n == 1:
            engine.decode(42)
        else:
            engine.prefill(list(range(2000, 2000 + n)), all_logits=True)

    step(1)
    costs = {n: median_seconds(lambda n=n: step(n), 7) for n in range(1, max_k + 2)}
    return {
        "threads": threads,
        "decode_s": costs[1],
        "verify_s": {k: costs[k + 1] for k in range(1, max_k + 1)},
    }


def draft_costs(package: Path, dtype: str) -> dict:
    import torch

    from devices.spec_forward.torch_forward import TorchForward, TorchForwardConfig
    from edge.package import open_package

    draft = TorchForward.from_package(
        open_package(package),
        TorchForwardConfig(
            device="cuda" if torch.cuda.is_available() else "cpu", dtype=dtype, max_context=1024
        ),
    )
    draft.prefill(list(range(1000, 1128)))
    base = draft.position

    def token():
        draft.rewind(base)
        draft.decode(7)

    token()
    return {
        "device": str(draft.device),
        "dtype": dtype,
        "decode_s": median_seconds(token, 31),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def speculative_run(target_pkg: Path, draft_pkg: Path, tokens: int) -> dict:
    """One real run: GPU draft via edge's ModelDraft, CPU target; output must equal plain."""
    import torch

    from devices.spec_forward.torch_forward import TorchForward, TorchForwardConfig
    from edge.engine import Engine, EngineConfig
    from edge.package import open_package
    from edge.speculative import ModelDraft, SpeculativeConfig, SpeculativeDecoder

    target = Engine(open_package(target_pkg), EngineConfig(max_context=1024))
    draft = TorchForward.from_package(
        open_package(draft_pkg),
        TorchForwardConfig(
            device="cuda" if torch.cuda.is_available() else "cpu", dtype="float32", max_context=1024
        ),
    )
    prompt = list(range(1000, 1032))
    logits = target.prefill(prompt)[0]
    plain = []
    for _ in range(tokens):
        plain.append(int(np.argmax(logits)))
        logits = target.decode(plain[-1])
    target.reset()
    decoder = SpeculativeDecoder(
        target, ModelDraft(draft), SpeculativeConfig(adaptive=False, draft_tokens=4, parallel=True)
    )
    from edge.generate import GenerationConfig

    class _Tok:  # the random model has no meaningful text: ids only
        eos_token_ids = ()

        def decode(self, ids, skip_special_tokens=True):
            return ""

    out = [
        r.token
        for r in decoder.stream(
            _Tok(), prompt, GenerationConfig(max_tokens=tokens, ignore_eos=True)
        )
    ]
    decoder.close()
    return {"identical_to_plain": out == plain, "tokens": tokens}


def projection(target: dict, draft: dict, acceptance: float, max_k: int) -> dict:
    t1, td = target["decode_s"], draft["decode_s"]
    rows = {}
    for k in range(1, max_k + 1):
        expected = (1 - acceptance ** (k + 1)) / (1 - acceptance)
        tv = target["verify_s"][k]
        rows[k] = {
            "sequential": expected * t1 / (k * td + tv),
            "overlapped": expected * t1 / max(k * td, tv),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "edge" / "gpu-spec")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--acceptance", type=float, nargs="+", default=[0.85, 0.7])
    parser.add_argument("--max-k", type=int, default=8)
    args = parser.parse_args()

    from exporters.export import ExportConfig, export

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    packages = {}
    for seed, (role, shape) in enumerate(SHAPES.items()):
        start = time.perf_counter()
        folder = make_checkpoint(
            args.work / role, SMALL if args.small else shape, args.tokenizer, seed
        )
        packages[role] = export(
            folder,
            args.work / f"{role}-int4",
            ExportConfig(quant="int4", check_tokenizer=False),
            overwrite=True,
            progress=False,
        )
        results[f"{role}_export_s"] = time.perf_counter() - start
        print(role, "exported", flush=True)
    results["target"] = [target_costs(packages["target"], t, args.max_k) for t in (2, 16)]
    print("target", results["target"], flush=True)
    results["draft"] = [draft_costs(packages["draft"], d) for d in ("float32", "float16")]
    print("draft", results["draft"], flush=True)
    results["speculative_run"] = speculative_run(packages["target"], packages["draft"], 24)
    print("run", results["speculative_run"], flush=True)
    results["projection"] = {
        f"a={a} target {t['threads']} threads draft {d['dtype']}": projection(t, d, a, args.max_k)
        for a in args.acceptance
        for t in results["target"]
        for d in results["draft"]
    }
    (args.out / "gpu_speculative.json").write_text(json.dumps(results, indent=1))
    for name, rows in results["projection"].items():
        best = max(rows, key=lambda k: rows[k]["overlapped"])
        print(
            f"{name}: best k={best} sequential {rows[best]['sequential']:.2f}x, "
            f"overlapped {rows[best]['overlapped']:.2f}x"
        )


if __name__ == "__main__":
    main()
