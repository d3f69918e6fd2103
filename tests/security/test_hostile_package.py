"""A hostile edge package cannot read the user's files, and is refused with a typed error.

Each test builds a hostile package from a private copy of the real SmolLM2 package, keeping
every `files[]` size and sha256 consistent so that the one thing wrong is the attack itself,
then runs it the two ways a user would: `edge run PKG "Hi" -n 4` (exit code 2, one clear
"error:" line on stderr, nothing generated on stdout) and `edge.load(PKG)` (a `PackageError`,
which is an `EdgeError`). Loader rules under test:

- every path in the manifest is a relative name inside the package directory: no `..`, no
  absolute path, no symlink leaving the directory, only regular files;
- every file a part reads is listed (and so hashed) in `files[]`;
- an ONNX graph has no external data besides its own part's manifest tensors, refused before
  ONNX Runtime sees the graph (ONNX Runtime would read it relative to the working directory);
- tensors lie inside their files, and the spec's layer count matches the block parts;
- the verification stamp notices a file changed behind it, even with its mtime restored.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge
from edge.errors import EdgeError, IntegrityError, PackageError
from edge.package import open_package

pytestmark = pytest.mark.timeout(180)

WEIGHT = "block.005.bin"
SECRET_SIZE = 4096


# ---- checks -----------------------------------------------------------------------------------


def assert_cli_refuses(result: Any, *needles: str, canary: bytes = b"") -> None:
    """`edge run` exited 2 with one "edge run: error:" message naming `needles`, generating
    nothing and echoing no secret."""
    assert result.rc == 2, f"edge run exited {result.rc}; stderr:\n{result.err[-2000:]}"
    assert result.err.startswith("edge run: error: "), result.err[-2000:]
    assert "Traceback" not in result.err, result.err[-2000:]
    for needle in needles:
        assert needle in result.err, f"{needle!r} not named in: {result.err.strip()}"
    assert result.out == "", f"something was generated: {result.out!r}"
    if canary:
        text = canary.decode()
        assert text not in result.out and text not in result.err


def assert_sdk_refuses(pkg: Path, error: type[Exception] = PackageError) -> EdgeError:
    """`edge.load(pkg)` (and a generation, should loading be lazy) raises `error`."""
    with pytest.raises(EdgeError) as info:
        model = edge.load(str(pkg), progress=False)
        model.generate("Hi", max_tokens=4)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    return info.value


def _close(package: Any) -> None:
    close = getattr(package, "close", None)
    if close is not None:
        close()


def _open(root: Path, verify: str = "auto") -> None:
    _close(open_package(root, verify=verify))  # type: ignore[arg-type]


# ---- 1. exfiltration through ONNX external data -----------------------------------------------


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile: Any) -> dict[str, Path]:
    """The user's private files a hostile graph aims at, the working directory set beside them:
    `loot/secret.txt` under the working directory, and `secret.txt` one level above it (which
    is also one level above the package)."""
    work = tmp_path / "work"
    (work / "loot").mkdir(parents=True)
    data = (hostile.CANARY * (SECRET_SIZE // len(hostile.CANARY) + 1))[:SECRET_SIZE]
    paths = {"cwd": work / "loot" / "secret.txt", "parent": tmp_path / "secret.txt"}
    for path in paths.values():
        path.write_bytes(data)
    monkeypatch.chdir(work)
    return paths


# (graph, external data location, initializer name, bytes, graph output it is added to)
EXFILTRATION = {
    "cwd-relative": ("head.onnx", "loot/secret.txt", "stolen", 4, None),
    "parent": ("head.onnx", "../secret.txt", "stolen", 4, None),
    "absolute": ("head.onnx", "{parent}", "stolen", 4, None),
    # inside the package and listed (hashed), but no manifest tensor of the head: still refused
    "listed-package-file": ("head.onnx", "tokenizer.json", "stolen", 4, None),
    "block-graph": ("block.3.onnx", "loot/secret.txt", "stolen", 2304, "hidden.4"),
    # the name of another part's manifest tensor does not make it one of this part's
    "other-parts-tensor": (
        "block.3.onnx",
        "loot/secret.txt",
        "blk.0.attn_norm.weight",
        2304,
        "hidden.4",
    ),
}


@pytest.mark.parametrize("case", list(EXFILTRATION))
def test_graph_with_external_data_is_refused(
    package: Path,
    hostile: Any,
    run_cli: Callable,
    secrets: dict[str, Path],
    ort_spy: list[bytes],
    case: str,
) -> None:
    """A graph whose initializer reads external data that is not one of its part's manifest
    tensors (a file under the working directory, above the package, absolute, or a listed
    package file) is refused with PackageError before ONNX Runtime sees it."""
    graph, location, name, nbytes, output = EXFILTRATION[case]
    location = location.format(parent=secrets["parent"])
    path = package / graph
    hostile.write_bytes(
        path,
        hostile.add_external_initializer(
            path.read_bytes(), location, name=name, nbytes=nbytes, output=output
        ),
    )
    data = hostile.read_manifest(package)
    hostile.list_file(data, graph, path)  # the graph's hash is right: only its content is hostile
    hostile.write_manifest(package, data)

    result = run_cli(package)
    assert_cli_refuses(result, graph.removesuffix(".onnx"), canary=hostile.CANARY)
    assert_sdk_refuses(package)
    leaked = [m for m in ort_spy if location.encode() in m]
    assert not leaked, "ONNX Runtime was handed the hostile graph"


def test_external_data_premise(
    tmp_path: Path, hostile: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hostile graphs above are real attacks: ONNX Runtime, given such a graph as bytes,
    reads the file relative to the working directory (with graph optimizations off; with them
    on this version fails instead, which a future one may not)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    (tmp_path / "loot").mkdir()
    (tmp_path / "loot" / "secret.txt").write_bytes(hostile.CANARY)
    monkeypatch.chdir(tmp_path)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    hostile_bytes = hostile.add_external_initializer(
        model.SerializeToString(), "loot/secret.txt", nbytes=16
    )
    onnx.checker.check_model(onnx.load_model_from_string(hostile_bytes))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(hostile_bytes, options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.zeros(4, np.float32)})
    assert out.tobytes() == hostile.CANARY[:16]


# ---- 2. paths outside the package -------------------------------------------------------------


class Edit:
    """One hostile edit of a package copy: the manifest as a dict, files outside it to aim at."""

    def __init__(self, pkg: Path, outside: Path, data: dict[str, Any], hostile: Any) -> None:
        self.pkg, self.outside, self.data, self.h = pkg, outside, data, hostile

    def rel(self, name: str) -> str:
        return os.path.relpath(self.outside / name, self.pkg)

    def deep(self, name: str) -> str:
        return "../" * 40 + str(self.outside / name).lstrip("/")

    def absolute(self, name: str) -> str:
        return str(self.outside / name)

    def _target(self, new: str) -> Path:
        return Path(new) if os.path.isabs(new) else self.pkg / new

    def tensor_file(self, part: str, old: str, new: str) -> str:
        """Part `part`'s tensors in `old` now read `new` (a copy of `old` out there)."""
        for t in self.h.part(self.data, part)["tensors"]:
            if t["file"] == old:
                t["file"] = new
        self.h.list_file(self.data, new, self._target(new), replace=old)
        (self.pkg / old).unlink()
        return new

    def graph(self, part: str, new: str) -> str:
        entry = self.h.part(self.data, part)
        old, entry["graph"] = entry["graph"], new
        self.h.list_file(self.data, new, self._target(new), replace=old)
        (self.pkg / old).unlink()
        return new

    def prefill_graph(self, part: str, new: str) -> str:
        self.h.part(self.data, part)["prefill_graph"] = new
        self.h.list_file(self.data, new, self._target(new))
        return new

    def static_graph(self, part: str, new: str) -> str:
        self.h.part(self.data, part)["static_graphs"] = [[1, new]]
        self.h.list_file(self.data, new, self._target(new))
        return new

    def tokenizer(self, new: str) -> str:
        old, self.data["tokenizer"]["file"] = self.data["tokenizer"]["file"], new
        self.h.list_file(self.data, new, self._target(new), replace=old)
        (self.pkg / old).unlink()
        return new

    def listed(self, new: str) -> str:
        self.h.list_file(self.data, new, self._target(new))
        return new

    def symlink(self, name: str, target: str) -> str:
        """`name` becomes a symlink to `target`: same bytes, so the manifest stays right."""
        (self.pkg / name).unlink()
        os.symlink(target, self.pkg / name)
        return name

    def symlinked_dir(self) -> str:
        os.symlink(self.outside, self.pkg / "sub")
        self.tensor_file("head", "head.bin", "sub/head.bin")
        return "sub/head.bin"

    def etc_services(self) -> str:
        if not Path("/etc/services").is_file():
            pytest.skip("no /etc/services here")
        return self.tensor_file("head", "head.bin", "../" * 40 + "etc/services")

    def fifo(self, name: str) -> str:
        (self.pkg / name).unlink()
        os.mkfifo(self.pkg / name)
        return name

    def directory(self, name: str) -> str:
        (self.pkg / name).unlink()
        (self.pkg / name).mkdir()
        return name


# each returns what the error message must name
TRAVERSAL: dict[str, Callable[[Edit], str]] = {
    "tensor-relative": lambda e: e.tensor_file("head", "head.bin", e.rel("head.bin")),
    "tensor-deep-relative": lambda e: e.tensor_file("head", "head.bin", e.deep("head.bin")),
    "tensor-absolute": lambda e: e.tensor_file("head", "head.bin", e.absolute("head.bin")),
    "tensor-etc-services": lambda e: e.etc_services(),
    "graph-relative": lambda e: e.graph("head", e.rel("head.onnx")),
    "graph-absolute": lambda e: e.graph("head", e.absolute("head.onnx")),
    "prefill-graph-relative": lambda e: e.prefill_graph("block.0", e.rel("block.0.onnx")),
    "static-graph-absolute": lambda e: e.static_graph("block.0", e.absolute("block.0.onnx")),
    "tokenizer-relative": lambda e: e.tokenizer(e.rel("tokenizer.json")),
    "tokenizer-absolute": lambda e: e.tokenizer(e.absolute("tokenizer.json")),
    "files-entry-relative": lambda e: e.listed(e.rel("tokenizer.json")),
    "files-entry-absolute": lambda e: e.listed(e.absolute("tokenizer.json")),
    "symlink-weight-relative": lambda e: e.symlink("embed.bin", e.rel("embed.bin")),
    "symlink-tokenizer-absolute": lambda e: e.symlink(
        "tokenizer.json", e.absolute("tokenizer.json")
    ),
    "symlink-graph": lambda e: e.symlink("head.onnx", e.absolute("head.onnx")),
    "symlinked-directory": lambda e: e.symlinked_dir(),
    "fifo-weight": lambda e: e.fifo("head.bin"),
    "directory-weight": lambda e: e.directory("head.bin"),
}


@pytest.fixture
def outside(smollm2_package: Path, tmp_path: Path) -> Path:
    """Files outside the package with exactly the package's bytes (hard links of the fixture's):
    a package reading them would run fine, so only the path can be what is refused."""
    out = tmp_path / "outside"
    out.mkdir()
    for name in ("head.bin", "head.onnx", "block.0.onnx", "embed.bin", "tokenizer.json"):
        os.link(smollm2_package / name, out / name)
    return out


# Opening a FIFO for reading blocks until a writer comes: if the loader opens one, it hangs.
TRAVERSAL_CASES = [
    pytest.param(case, marks=pytest.mark.timeout(10)) if case.startswith("fifo") else case
    for case in TRAVERSAL
]


@pytest.mark.parametrize("case", TRAVERSAL_CASES)
def test_path_outside_package_is_refused(
    package: Path, outside: Path, hostile: Any, run_cli: Callable, case: str
) -> None:
    """A manifest path or a package file that leads outside the package directory (`..`, an
    absolute path, a symlink, a symlinked folder) or to something not a regular file (a FIFO,
    a folder) is refused with PackageError naming it, whatever the hashes say."""
    data = hostile.read_manifest(package)
    named = TRAVERSAL[case](Edit(package, outside, data, hostile))
    hostile.write_manifest(package, data)

    result = run_cli(package)
    assert_cli_refuses(result, named if len(named) < 200 else Path(named).name)
    assert_sdk_refuses(package)


# ---- 3. every file a part reads is listed -----------------------------------------------------


def _unlisted_tensor_file(pkg: Path, data: dict[str, Any], hostile: Any) -> str:
    os.link(pkg / "head.bin", pkg / "extra.bin")
    for t in hostile.part(data, "head")["tensors"]:
        if t["file"] == "head.bin":
            t["file"] = "extra.bin"
    return "extra.bin"


def _unlisted_graph(pkg: Path, data: dict[str, Any], hostile: Any) -> str:
    os.link(pkg / "head.onnx", pkg / "extra.onnx")
    hostile.part(data, "head")["graph"] = "extra.onnx"
    return "extra.onnx"


def _unlisted_prefill_graph(pkg: Path, data: dict[str, Any], hostile: Any) -> str:
    os.link(pkg / "block.0.onnx", pkg / "extra.onnx")
    hostile.part(data, "block.0")["prefill_graph"] = "extra.onnx"
    return "extra.onnx"


def _unlisted_tokenizer(pkg: Path, data: dict[str, Any], hostile: Any) -> str:
    os.link(pkg / "tokenizer.json", pkg / "extra.json")
    data["tokenizer"]["file"] = "extra.json"
    return "extra.json"


UNLISTED = {
    "tensor-file": _unlisted_tensor_file,
    "graph": _unlisted_graph,
    "prefill-graph": _unlisted_prefill_graph,
    "tokenizer": _unlisted_tokenizer,
}


@pytest.mark.parametrize("case", list(UNLISTED))
def test_file_not_listed_in_files_is_refused(
    package: Path, hostile: Any, run_cli: Callable, case: str
) -> None:
    """A part or the tokenizer reading a file inside the package that `files[]` does not list
    (so no size or sha256 vouches for it) is refused with PackageError naming the file."""
    data = hostile.read_manifest(package)
    named = UNLISTED[case](package, data, hostile)
    hostile.write_manifest(package, data)

    assert_cli_refuses(run_cli(package), named)
    assert_sdk_refuses(package)


# ---- 4. the verification stamp ----------------------------------------------------------------


def _flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _flip_in_place(path: Path) -> None:
    _flip_byte(path)


def _replace_by_flipped_copy(path: Path) -> None:
    copy = path.with_name(path.name + ".new")
    shutil.copyfile(path, copy)
    _flip_byte(copy)
    os.replace(copy, path)


@pytest.mark.parametrize(
    "change", [_flip_in_place, _replace_by_flipped_copy], ids=["in-place", "replaced"]
)
def test_changed_file_with_restored_mtime_is_caught(
    package: Path, hostile: Any, change: Callable[[Path], None]
) -> None:
    """A weight file changed after a verified load, its size kept and its atime/mtime restored
    (`touch -r`), is hashed again on the next default load: IntegrityError naming it, and
    again on every later load (a failed check records nothing)."""
    weight = hostile.own(package / WEIGHT)
    _open(package)  # hashes everything, writes the stamp
    before = weight.stat()
    change(weight)
    os.utime(weight, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weight.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    for _ in range(2):
        with pytest.raises(IntegrityError, match=re.escape(WEIGHT)):
            _open(package)


def test_changed_file_with_restored_mtime_fails_edge_run(
    package: Path, hostile: Any, run_cli: Callable
) -> None:
    """The same through the CLI: a run that worked, a byte flipped with the mtime restored,
    and the next `edge run` exits 2 naming the file; `edge.load` raises IntegrityError."""
    weight = hostile.own(package / WEIGHT)
    first = run_cli(package)
    assert first.rc == 0 and first.out.strip(), first.err[-2000:]
    before = weight.stat()
    _flip_byte(weight)
    os.utime(weight, ns=(before.st_atime_ns, before.st_mtime_ns))

    assert_cli_refuses(run_cli(package), WEIGHT)
    assert_sdk_refuses(package, IntegrityError)


def test_touched_but_unchanged_file_still_loads(package: Path, hostile: Any) -> None:
    """No false alarm: a file whose times were reset without a change is hashed again and
    passes, and an untouched package loads again."""
    weight = hostile.own(package / WEIGHT)
    _open(package)
    _open(package)
    before = weight.stat()
    os.utime(weight, ns=(before.st_atime_ns, before.st_mtime_ns))
    _open(package)


# ---- 6. tensors past the end of their file ----------------------------------------------------


def _offset_edit(part: str, tensor: int, offset: Callable[[int], int]) -> Callable:
    def edit(pkg: Path, data: dict[str, Any], hostile: Any) -> str:
        entry = hostile.part(data, part)["tensors"][tensor]
        entry["offset"] = offset((pkg / entry["file"]).stat().st_size)
        return entry["file"]

    return edit


OFFSETS = {
    "at-end": _offset_edit("head", 0, lambda size: size),
    "straddles-end": _offset_edit("head", 0, lambda size: size - 1024),
    "far-past-end": _offset_edit("head", 0, lambda size: 1 << 39),
    "block-at-end": _offset_edit("block.5", 2, lambda size: size),
    "block-last-page": _offset_edit("block.5", 2, lambda size: size - 65536),
}


@pytest.mark.parametrize("case", list(OFFSETS))
def test_tensor_past_end_of_file_is_package_error(
    package: Path, hostile: Any, run_cli: Callable, case: str
) -> None:
    """A tensor whose offset + nbytes runs past its (listed, correctly hashed) file is refused
    with PackageError naming the file, not a traceback from numpy or a SIGBUS."""
    data = hostile.read_manifest(package)
    named = OFFSETS[case](package, data, hostile)
    hostile.write_manifest(package, data)

    assert_cli_refuses(run_cli(package), named)
    assert_sdk_refuses(package)


# ---- 7. layer count ---------------------------------------------------------------------------


def _set_layers(n: int) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["spec"].__setitem__("num_layers", n)


def _drop_block(data: dict[str, Any]) -> None:
    data["parts"] = [p for p in data["parts"] if p["name"] != "block.15"]


def _swap_blocks(data: dict[str, Any]) -> None:
    names = [p["name"] for p in data["parts"]]
    i, j = names.index("block.3"), names.index("block.4")
    data["parts"][i], data["parts"][j] = data["parts"][j], data["parts"][i]


LAYERS = {
    "fewer-layers": _set_layers(29),
    "more-layers": _set_layers(31),
    "block-missing": _drop_block,
    "blocks-out-of-order": _swap_blocks,
}


@pytest.mark.parametrize("case", list(LAYERS))
def test_layer_count_mismatch_is_package_error(
    package: Path, hostile: Any, run_cli: Callable, case: str
) -> None:
    """A spec whose `num_layers` differs from the block parts (or blocks missing or out of
    order) is refused with PackageError before anything runs."""
    data = hostile.read_manifest(package)
    LAYERS[case](data)
    hostile.write_manifest(package, data)

    assert_cli_refuses(run_cli(package), "block")
    assert_sdk_refuses(package)


# ---- chat templates ---------------------------------------------------------------------------

TEMPLATES = {
    "os-through-globals": "{{ cycler.__init__.__globals__.os.popen('{cmd}').read() }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "include-file": "{% include '{secret}' %}",
    "import-file": "{% from '{secret}' import x %}{{ x }}",
}


@pytest.mark.parametrize("case", list(TEMPLATES))
def test_hostile_chat_template_is_refused(
    package: Path, hostile: Any, run_cli: Callable, secrets: dict[str, Path], case: str
) -> None:
    """A chat template is code shipped in the manifest: one that reaches for Python internals,
    a shell or a file is refused (rendered in a sandbox) with an error, runs nothing and
    reads nothing."""
    marker = secrets["parent"].with_name("pwned")
    template = TEMPLATES[case].replace("{cmd}", f"touch {marker}; cat {secrets['parent']}")
    data = hostile.read_manifest(package)
    data["tokenizer"]["chat_template"] = template.replace("{secret}", str(secrets["parent"]))
    hostile.write_manifest(package, data)

    assert_cli_refuses(run_cli(package, "--chat"), "chat template", canary=hostile.CANARY)
    assert not marker.exists(), "the template ran a shell command"


# ---- nothing lost -----------------------------------------------------------------------------


def test_shared_package_is_untouched(smollm2_package: Path) -> None:
    """Every attack above was staged on private copies: the original still fully verifies."""
    _open(smollm2_package, verify="full")
