"""Property-based fuzzing of the manifest reader: whatever `manifest.json` holds, reading it
or opening its package either succeeds or raises `EdgeError`, never anything else
(RecursionError, ValueError, OverflowError, UnicodeEncodeError, a numpy error ...).

The package under fuzz is a tiny valid one built in memory with `edge.format`'s own
dataclasses (two blocks, 8-wide, real ONNX graphs whose initializers are the manifest's
tensors), so no export is needed and each example takes milliseconds. Inputs: random JSON
values, random bytes, and mutations of the valid manifest (fields deleted, types swapped,
huge/negative/non-finite numbers, deep nesting, hostile path strings).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import format as fmt
from edge.errors import EdgeError, PackageError
from edge.package import open_package

pytestmark = pytest.mark.timeout(120)

# Bounded and fast; no example database (it would write .hypothesis/ into the work tree). The
# only function-scoped fixture is the autouse private cache, which needs no reset per example.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEEP = "__deep_nesting__"


# ---- a tiny valid package ---------------------------------------------------------------------


def _graph(
    name: str,
    inputs: list[tuple[str, int]],
    outputs: list[str],
    op: str,
    tensors: list[fmt.TensorEntry],
) -> bytes:
    """A valid ONNX graph for one part: `op` over the inputs and the part's external tensors."""
    from onnx import TensorProto, helper

    inits = []
    for t in tensors:
        tensor = TensorProto(name=t.name, data_type=TensorProto.FLOAT, dims=list(t.shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", t.file),
            ("offset", str(t.offset)),
            ("length", str(t.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        inits.append(tensor)
    graph = helper.make_graph(
        [
            helper.make_node(
                op,
                [tensors[0].name, inputs[0][0]]
                if op == "Gather"
                else [inputs[0][0], tensors[0].name],
                outputs,
            )
        ],
        name,
        [helper.make_tensor_value_info(n, dtype, [None]) for n, dtype in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, None]) for n in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def build_tiny_package(root: Path) -> fmt.Manifest:
    """Write a valid two-block package of tiny float32 tensors to `root`; its manifest."""
    from onnx import TensorProto

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    spec = fmt.ModelSpec(
        architecture="llama",
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )

    def weights(file: str, shapes: dict[str, tuple[int, ...]]) -> tuple[fmt.TensorEntry, ...]:
        with fmt.WeightFileWriter(root, file) as writer:
            return tuple(
                writer.add(n, rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()
            )

    parts = []
    embed = weights("embed.bin", {"token_embd.weight": (16, 8)})
    (root / "embed.onnx").write_bytes(
        _graph(
            "embed",
            [(fmt.INPUT_IDS, TensorProto.INT64)],
            [fmt.hidden_name(0)],
            "Gather",
            list(embed),
        )
    )
    parts.append(
        fmt.PartEntry(
            "embed", "embed", "embed.onnx", embed, (fmt.INPUT_IDS,), (fmt.hidden_name(0),)
        )
    )
    for i in range(spec.num_layers):
        tensors = weights(
            f"block.{i:03d}.bin",
            {f"blk.{i}.attn_norm.weight": (8,), f"blk.{i}.ffn_norm.weight": (8,)},
        )
        graph = f"block.{i}.onnx"
        (root / graph).write_bytes(
            _graph(
                f"block.{i}",
                [(fmt.hidden_name(i), TensorProto.FLOAT)],
                [fmt.hidden_name(i + 1)],
                "Mul",
                list(tensors),
            )
        )
        parts.append(
            fmt.PartEntry(
                f"block.{i}",
                "block",
                graph,
                tensors,
                (fmt.hidden_name(i),),
                (fmt.hidden_name(i + 1),),
                block_index=i,
            )
        )
    head = weights("head.bin", {"output.weight": (8, 16)})
    last = fmt.hidden_name(spec.num_layers)
    (root / "head.onnx").write_bytes(
        _graph("head", [(last, TensorProto.FLOAT)], [fmt.LOGITS], "MatMul", list(head))
    )
    parts.append(fmt.PartEntry("head", "head", "head.onnx", head, (last,), (fmt.LOGITS,)))
    (root / "tokenizer.json").write_text('{"model": {"type": "BPE"}}\n', encoding="utf-8")

    names = sorted(p.name for p in root.iterdir())
    manifest = fmt.Manifest(
        spec=spec,
        parts=tuple(parts),
        tokenizer=fmt.TokenizerInfo("tokenizer.json", None, None, None, (0,)),
        files=tuple(fmt.describe_file(root, n) for n in names),
        exporter={"edge_version": "test"},
    )
    fmt.write_manifest(root, manifest)
    return manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fmt.Manifest]:
    root = tmp_path_factory.mktemp("tiny") / "pkg"
    return root, build_tiny_package(root)


@pytest.fixture(scope="module")
def base(tiny: tuple[Path, fmt.Manifest]) -> dict[str, Any]:
    """The tiny package's manifest as a JSON value, to mutate."""
    return json.loads(fmt.manifest_to_json(tiny[1]))


@pytest.fixture(scope="module")
def scratch(tiny: tuple[Path, fmt.Manifest], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny package whose manifest.json each example overwrites."""
    root = tmp_path_factory.mktemp("scratch") / "pkg"
    shutil.copytree(tiny[0], root)
    return root


def _close(package: Any) -> None:
    close = getattr(package, "close", None)
    if close is not None:
        close()


def test_tiny_package_is_valid(tiny: tuple[Path, fmt.Manifest]) -> None:
    """The fuzzing baseline opens and fully verifies: mutations start from a valid package."""
    root, manifest = tiny
    assert fmt.read_manifest(root) == manifest
    _close(open_package(root, verify="full"))


# ---- the property -----------------------------------------------------------------------------


def _text(value: Any, deep: int = 0) -> str:
    """JSON text of `value`, with every DEEP marker replaced by `deep` nested lists (built as
    text: json.dumps would itself recurse too deeply)."""
    text = json.dumps(value)
    return text.replace(json.dumps(DEEP), "[" * deep + "]" * deep) if deep else text


def _inside(root: Path, name: str) -> bool:
    real = os.path.realpath(root / name)
    return os.path.commonpath([real, os.path.realpath(root)]) == os.path.realpath(root)


def check_reader(text: str | bytes, scratch: Path) -> None:
    """Each way in accepts `text` or raises EdgeError; an accepted package names no file
    outside its directory."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if isinstance(text, str):
        with contextlib.suppress(EdgeError):
            fmt.manifest_from_json(text)
    path = scratch / fmt.MANIFEST_FILE
    path.unlink(missing_ok=True)
    path.write_bytes(raw)
    with contextlib.suppress(EdgeError):
        fmt.read_manifest(scratch)
    try:
        package = open_package(scratch, verify="sizes")
    except EdgeError:
        return
    try:
        m = package.manifest
        names = [f.path for f in m.files] + [m.tokenizer.file]
        for p in m.parts:
            names += [p.graph, *(g for _, g in p.static_graphs), *(t.file for t in p.tensors)]
            names += [p.prefill_graph] if p.prefill_graph else []
        outside = [n for n in names if not _inside(scratch, n)]
        assert not outside, f"an opened package names files outside it: {outside}"
    finally:
        _close(package)


# ---- (i) random JSON and bytes ----------------------------------------------------------------

NUMBERS = st.sampled_from(
    [
        -1,
        0,
        1,
        7,
        2**31,
        2**53 + 1,
        2**63 - 1,
        2**63,
        2**64,
        -(2**63) - 1,
        10**30,
        -(10**30),
        (1 << 40) + 1,
        1.5,
        -0.0,
        1e308,
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
    ]
)
PATHS = st.sampled_from(
    [
        "",
        ".",
        "..",
        "../embed.bin",
        "/etc/passwd",
        "embed.bin/..",
        "a/../../embed.bin",
        "./embed.bin",
        "embed.bin/",
        "//embed.bin",
        "C:\\Windows\\win.ini",
        "C:embed.bin",
        "\\\\server\\share\\x",
        "..\\embed.bin",
        "embed.bin\0.txt",
        "manifest.json",
        "/proc/self/environ",
        "/dev/zero",
        "~/.ssh/id_rsa",
        "%2e%2e/embed.bin",
        "embed.bin\n",
        " embed.bin",
        "\u202eembed.bin",
        "\ud800.bin",
        "a\udcff.bin",
        "a" * 300,
        "x/" * 200,
    ]
) | st.text(alphabet=st.sampled_from([*"./\\:~\0ab", "é", "\u2215"]), max_size=12)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | NUMBERS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | PATHS
)
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=24,
)


@FUZZ
@given(value=JSON)
def test_random_json_is_accepted_or_edge_error(value: Any, scratch: Path) -> None:
    """Any JSON value as a whole manifest."""
    check_reader(_text(value), scratch)


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["spec", "parts", "tokenizer", "files", "exporter", "quantization", "extra"]
        ),
        JSON,
    )
)
def test_random_fields_under_a_valid_header(fields: dict[str, Any], scratch: Path) -> None:
    """Random values under the header that gets past the first check."""
    check_reader(
        _text({"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, **fields}), scratch
    )


@FUZZ
@given(raw=st.binary(max_size=512) | st.binary(max_size=64).map(lambda b: b"\xef\xbb\xbf" + b))
def test_random_bytes_are_accepted_or_edge_error(raw: bytes, scratch: Path) -> None:
    """Arbitrary bytes as manifest.json (binary, a BOM, cut UTF-8)."""
    check_reader(raw, scratch)


# ---- (ii) mutations of a valid manifest -------------------------------------------------------


def _locations(value: Any, at: tuple = ()) -> list[tuple]:
    """Every path (sequence of keys/indices) to a value inside `value`, the root excluded."""
    out = []
    items = (
        value.items()
        if isinstance(value, dict)
        else (enumerate(value) if isinstance(value, list) else ())
    )
    for key, child in items:
        out.append((*at, key))
        out.extend(_locations(child, (*at, key)))
    return out


def _mutate(data: Any, at: tuple, kind: str, draw: Any) -> int:
    """Apply one mutation at `at`; returns the nesting depth to splice for DEEP (0: none)."""
    *parent_at, key = at
    parent = data
    for k in parent_at:
        parent = parent[k]
    value = parent[key]
    deep = 0
    if kind == "delete":
        del parent[key]
        return 0
    if kind == "json":
        new = draw(JSON)
    elif kind == "number":
        new = draw(NUMBERS)
    elif kind == "path":
        new = draw(PATHS)
    elif kind == "wrap":
        new = draw(st.sampled_from([[value], {"value": value}, str(value), (value,)]))
        new = list(new) if isinstance(new, tuple) else new
    elif kind == "duplicate":
        if isinstance(parent, list):  # a part, tensor or file listed twice
            parent.append(copy.deepcopy(value))
            return 0
        new = [value, copy.deepcopy(value)]
    elif kind == "scale":
        new = (
            draw(st.sampled_from([-1, 2**64, 10**30])) * value
            if isinstance(value, int | float) and not isinstance(value, bool)
            else value
        )
    else:  # deep
        new, deep = DEEP, draw(st.sampled_from([3, 200, 5000, 100_000]))
    parent[key] = new
    return deep


MUTATIONS = ["delete", "json", "number", "path", "wrap", "duplicate", "scale", "deep"]


@FUZZ
@given(data=st.data())
def test_mutated_manifest_is_accepted_or_edge_error(
    data: st.DataObject, base: dict[str, Any], scratch: Path
) -> None:
    """One to three mutations of the valid manifest: deleted fields, swapped types, extreme
    numbers, hostile paths, nesting up to 100000 deep."""
    manifest = copy.deepcopy(base)
    deep = 0
    for _ in range(data.draw(st.integers(1, 3))):
        spots = _locations(manifest)
        if not spots:
            break
        at = data.draw(st.sampled_from(spots))
        deep = max(deep, _mutate(manifest, at, data.draw(st.sampled_from(MUTATIONS)), data.draw))
    check_reader(_text(manifest, deep), scratch)


# ---- explicit cases hypothesis may not reach ------------------------------------------------


@pytest.mark.parametrize("depth", [100_000, 10_000, 1_000])
def test_deeply_nested_document_is_package_error(depth: int, scratch: Path) -> None:
    """`[[[[...]]]]` 100000 levels deep is a PackageError, not a RecursionError."""
    text = "[" * depth + "]" * depth
    with pytest.raises(PackageError):
        fmt.manifest_from_json(text)
    check_reader(text, scratch)


@pytest.mark.parametrize("field", ["spec", "parts", "exporter", "quantization", "files"])
@pytest.mark.parametrize("depth", [100_000, 900, 50])
def test_deep_nesting_in_a_field(
    base: dict[str, Any], scratch: Path, field: str, depth: int
) -> None:
    """Deep lists and deep objects as a field of an otherwise valid manifest."""
    for nested in ("list", "object"):
        manifest = copy.deepcopy(base)
        manifest[field] = DEEP
        text = json.dumps(manifest)
        opening, closing = ("[", "]") if nested == "list" else ('{"a":', "}")
        text = text.replace(json.dumps(DEEP), opening * depth + "1" + closing * depth)
        check_reader(text, scratch)


NUMBER_LITERALS = {
    "5000-digit-int": "1" * 5000,
    "negative-5000-digit-int": "-" + "9" * 5000,
    "float-overflow": "1e999",
    "negative-float-overflow": "-1e999",
    "nan": "NaN",
    "infinity": "Infinity",
    "huge-exponent-int-like": "1E400",
}
NUMBER_FIELDS = {
    "vocab-size": ("spec", "vocab_size"),
    "offset": ("parts", 0, "tensors", 0, "offset"),
    "file-size": ("files", 0, "size"),
    "format-version": ("format_version",),
}


@pytest.mark.parametrize("literal", list(NUMBER_LITERALS))
@pytest.mark.parametrize("field", list(NUMBER_FIELDS))
def test_extreme_number_literal_is_package_error(
    base: dict[str, Any], scratch: Path, field: str, literal: str
) -> None:
    """A number the JSON parser itself chokes on (Python refuses int literals over 4300
    digits with a plain ValueError) or turns into inf/nan is a PackageError."""
    manifest = copy.deepcopy(base)
    target = manifest
    *parents, key = NUMBER_FIELDS[field]
    for k in parents:
        target = target[k]
    target[key] = DEEP
    text = json.dumps(manifest).replace(json.dumps(DEEP), NUMBER_LITERALS[literal])
    with pytest.raises(PackageError):
        fmt.manifest_from_json(text)
    check_reader(text, scratch)


RENAMED = ["embed.bin", "block.0.onnx", "tokenizer.json", "head.bin"]
HOSTILE_NAMES = {
    "lone-surrogate": "\ud800.bin",
    "escaped-byte": "a\udcff.bin",
    "nul": "embed.bin\0",
    "long-name": "a" * 5000,
    "long-path": "a/" * 3000 + "b",
}


def _rename(value: Any, old: str, new: str) -> Any:
    """`value` with every string equal to `old` replaced by `new` (a file renamed everywhere)."""
    if isinstance(value, dict):
        return {k: _rename(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, old, new) for v in value]
    return new if value == old else value


@pytest.mark.parametrize("name", list(HOSTILE_NAMES))
@pytest.mark.parametrize("old", RENAMED)
def test_unencodable_or_oversized_name_is_package_error(
    base: dict[str, Any], scratch: Path, old: str, name: str
) -> None:
    """A file renamed, in `files[]` and wherever it is used, to a name the OS cannot take (a
    lone surrogate, NUL, thousands of characters) or that does not exist is a PackageError
    from the manifest reader or from opening the package, not a UnicodeError or OSError."""
    text = json.dumps(_rename(base, old, HOSTILE_NAMES[name]))
    check_reader(text, scratch)
    with pytest.raises(PackageError):
        _close(open_package(scratch, verify="sizes"))


def test_fuzz_helpers_round_trip(base: dict[str, Any]) -> None:
    """`_text` splices nesting exactly where the marker was, and numbers survive."""
    assert json.loads(_text({"a": DEEP}, 3)) == {"a": [[[]]]}
    assert math.isnan(json.loads(_text({"x": float("nan")}))["x"])
    assert fmt.manifest_from_json(_text(base)) == fmt.manifest_from_json(json.dumps(base))
