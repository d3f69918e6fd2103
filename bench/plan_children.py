"""The processes whose memory bench/bench_plan_memory.py and bench/bench_plan.py measure.

Run as `python bench/plan_children.py JOB_JSON`; prints one line `RESULT {json}` with the
process's memory (VmRSS, VmHWM, RssAnon, RssFile, RssShmem from /proc/self/status, and the peak
RSS of `resource.getrusage`) after each stage. Jobs:

- {"job": "base"}: imports only (python, numpy, edge), then onnxruntime, then edge.streaming.
- {"job": "tokenizer", "package": P}: imports, then the package's tokenizer.
- {"job": "parts", "package": P, "backend": B, "start": S, "end": E, "prompt": N,
   "decode": M}: one segment of parts [S, E) compiled and loaded on backend B through the
   `devices` API, then a prompt of N tokens and M decode steps through it (random
   activations; what is measured is memory, not numbers).
- {"job": "model", "package": P, "max_context": C, "prompt": N, "decode": M,
   "placement": {...} | null, "budget": bytes | null, "prefill_chunk": K, "threads": T}:
   a whole `Model` as `edge.load` builds it (the streamed engine when a budget is given),
   a prompt of N tokens and M greedy decode steps, timed.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) * 1024
    # Linux keeps ru_maxrss across execve: in a child forked from a large process it is at
    # least the parent's RSS at fork. VmHWM belongs to this process's own memory.
    out["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def imports() -> None:
    """What every edge process imports; onnxruntime comes with the resident engine's backends
    and the streamed engine never loads it."""
    import numpy  # noqa: F401

    import edge  # noqa: F401
    from edge.model import Model  # noqa: F401


def job_tokenizer(job: dict, stages: dict) -> None:
    from edge.package import open_package
    from edge.tokenizer import Tokenizer

    package = open_package(job["package"], verify="sizes")
    stages["ready"] = status()
    Tokenizer.from_package(package).encode("hello " * 20)
    stages["tokenizer"] = status()


def _bind_segment(backend, loaded, executable, spec, n, buffers) -> None:
    from edge import format as fmt

    inputs, outputs = {}, {}
    if fmt.SEQLENS_K in executable.inputs:
        inputs[fmt.SEQLENS_K] = buffers["seqlens"]
        inputs[fmt.TOTAL_SEQUENCE_LENGTH] = buffers["total"]
    if fmt.INPUT_IDS in executable.inputs:
        inputs[fmt.INPUT_IDS] = buffers["ids"][:, :n]
    else:
        inputs[next(x for x in executable.inputs if x.startswith("hidden."))] = buffers[
            "hidden_in"
        ][:, :n]
    if fmt.LOGITS in executable.outputs:
        inputs[fmt.LOGITS_INDEX] = buffers["last"]
        outputs[fmt.LOGITS] = buffers["logits"]
    else:
        outputs[next(x for x in executable.outputs if x.startswith("hidden."))] = buffers[
            "hidden_out"
        ][:, :n]
    backend.bind(loaded, inputs, outputs)


def job_parts(job: dict, stages: dict) -> None:
    import numpy as np

    from devices import registry
    from devices.backend import Resident, SegmentGraph
    from edge.graph_merge import merge_models
    from edge.package import open_package
    from edge.rope import rope_tables

    backend = registry.create(job["backend"], {"threads": job.get("threads", 2)})
    available = backend.is_available()  # loads the runtime (OpenVINO's plugins) before "ready"
    if not available:
        raise SystemExit(f"{job['backend']} is not available: {available.reason}")
    package = open_package(job["package"], verify="sizes")
    spec, prompt = package.spec, job["prompt"]
    context = prompt + job["decode"]
    keys = [
        np.zeros((1, spec.num_kv_heads, context, spec.head_dim), np.float32)
        for _ in range(spec.num_layers)
    ]
    resident = Resident(keys, [k.copy() for k in keys], *rope_tables(spec, context))
    stages["ready"] = status()
    parts = tuple(package.manifest.parts[job["start"] : job["end"]])
    model = merge_models([package.graph_bytes(p) for p in parts], name=parts[0].name)
    executable = backend.compile(SegmentGraph(package, job["start"], parts, model))
    loaded = backend.load(executable, resident)
    stages["loaded"] = status()
    rng = np.random.default_rng(0)
    buffers = {
        "seqlens": np.zeros((1,), np.int32),
        "total": np.zeros((), np.int32),
        "ids": np.full((1, prompt), 100, np.int64),
        "last": np.zeros((1,), np.int64),
        "hidden_in": rng.standard_normal((1, prompt, spec.hidden_size), np.float32),
        "hidden_out": np.zeros((1, prompt, spec.hidden_size), np.float32),
        "logits": np.zeros((1, 1, spec.vocab_size), np.float32),
    }
    position = 0
    for n, steps, stage in ((prompt, 1, "prefill"), (1, job["decode"], "decode")):
        _bind_segment(backend, loaded, executable, spec, n, buffers)
        for _ in range(steps):
            buffers["seqlens"][0] = position + n - 1
            buffers["total"][()] = position + n
            buffers["last"][0] = n - 1
            backend.run(loaded, position, n)
            position += n
        stages[stage] = status()


def job_model(job: dict, stages: dict) -> dict:
    from edge.engine import EngineConfig
    from edge.model import Model
    from edge.package import open_package
    from edge.placement import Placement

    if job.get("placement") and any(
        s["backend"] == "openvino" for s in job["placement"]["segments"]
    ):
        import openvino  # noqa: F401  (counted in the model stage either way)
    stages["ready"] = status()
    if job.get("budget"):
        from edge.streaming import StreamConfig

        config = StreamConfig(
            int(job["budget"]),
            max_context=job["max_context"],
            prefill_chunk=job.get("prefill_chunk", 64),
            threads=job.get("threads"),
        )
    else:
        placement = Placement.from_dict(job["placement"]) if job.get("placement") else None
        config = EngineConfig(
            max_context=job["max_context"],
            threads=job.get("threads"),
            prefill_chunk=job.get("prefill_chunk", 256),
            placement=placement,
        )
    model = Model(open_package(job["package"], verify="sizes"), config, progress=False)
    stages["loaded"] = status()
    engine = model.engine
    ids = [(7 * i + 100) % model.spec.vocab_size for i in range(job["prompt"])]
    start = time.perf_counter()
    logits = engine.prefill(ids)
    prefill_s = time.perf_counter() - start
    stages["prefill"] = status()
    token = int(logits[-1].argmax())
    start = time.perf_counter()
    for _ in range(job["decode"]):
        token = int(engine.decode(token).argmax())
    decode_s = time.perf_counter() - start
    stages["decode"] = status()
    engine.close()
    return {
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "fallbacks": [str(f) for f in engine.fallbacks],
    }


def main() -> None:
    job = json.loads(sys.argv[1])
    stages = {"start": status()}
    imports()
    stages["imports"] = status()
    extra: dict = {}
    if job["job"] == "tokenizer":
        job_tokenizer(job, stages)
    elif job["job"] == "parts":
        job_parts(job, stages)
    elif job["job"] == "model":
        extra = job_model(job, stages)
    elif job["job"] == "base":
        import onnxruntime  # noqa: F401

        stages["onnxruntime"] = status()
        import edge.streaming.backend  # noqa: F401

        stages["streaming"] = status()
    else:
        raise SystemExit(f"unknown job {job['job']!r}")
    print("RESULT " + json.dumps({"stages": stages, **extra}), flush=True)


if __name__ == "__main__":
    main()
