"""Export and quantize never delete what they did not create, and every bad output is a typed
error that leaves what was there before intact.

Most tests export a tiny random Llama saved as a Hugging Face folder here (one layer, a 300-token
BPE, ~400 KB package: an export takes milliseconds once transformers is imported), so the real
export path runs end to end. Sources that are only checked, never read, use the real SmolLM2 GGUF.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge import format as fmt
from edge.cli.main import main
from edge.errors import OutputError, PackageError
from edge.package import open_package
from exporters import export as export_module
from exporters.export import ExportConfig, export, quantize_package


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))  # hash stamps stay private


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random one-layer Llama as a Hugging Face folder (safetensors, tokenizer.json)."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny") / "hf"
    folder.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, a tiny model for export tests"], trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|im_end|>",
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    vocab, hidden, inter = tok.get_vocab_size(), 16, 32
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": vocab,
                "hidden_size": hidden,
                "intermediate_size": inter,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "max_position_embeddings": 64,
                "rope_theta": 10000.0,
                "rms_norm_eps": 1e-6,
                "tie_word_embeddings": True,
            }
        )
    )
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    layer = "model.layers.0."
    save_file(
        {
            "model.embed_tokens.weight": w(vocab, hidden),
            "model.norm.weight": w(hidden),
            layer + "input_layernorm.weight": w(hidden),
            layer + "post_attention_layernorm.weight": w(hidden),
            layer + "self_attn.q_proj.weight": w(hidden, hidden),
            layer + "self_attn.k_proj.weight": w(8, hidden),
            layer + "self_attn.v_proj.weight": w(8, hidden),
            layer + "self_attn.o_proj.weight": w(hidden, hidden),
            layer + "mlp.gate_proj.weight": w(inter, hidden),
            layer + "mlp.up_proj.weight": w(inter, hidden),
            layer + "mlp.down_proj.weight": w(hidden, inter),
        },
        str(folder / "model.safetensors"),
    )
    return folder


@pytest.fixture
def package(tiny_hf: Path, tmp_path: Path) -> Path:
    """A fresh tiny package at tmp_path/out/pkg (its folder holds nothing else)."""
    return export(tiny_hf, tmp_path / "out" / "pkg", progress=False)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- --force replaces only an edge package --------------------------------------------------


def test_force_replaces_an_edge_package(tiny_hf: Path, package: Path) -> None:
    """overwrite=True swaps a package for a new one and leaves no temporary behind."""
    old_inode = (package / fmt.MANIFEST_FILE).stat().st_ino
    assert export(tiny_hf, package, overwrite=True, progress=False) == package
    assert (package / fmt.MANIFEST_FILE).stat().st_ino != old_inode
    open_package(package, verify="full")
    assert _temporaries(package.parent) == []


def test_force_refuses_a_package_holding_other_files(tiny_hf: Path, package: Path) -> None:
    """A package folder with a file the manifest does not list is not replaced."""
    (package / "notes.txt").write_text("mine\n")
    before = _snapshot(package)
    with pytest.raises(PackageError, match=r"notes\.txt"):
        export(tiny_hf, package, overwrite=True, progress=False)
    assert _snapshot(package) == before
    assert _temporaries(package.parent) == []


@pytest.mark.parametrize("manifest", [None, "{not json"], ids=["no-manifest", "bad-manifest"])
def test_force_refuses_a_folder_that_is_not_a_package(
    tiny_hf: Path, tmp_path: Path, manifest: str | None
) -> None:
    """A folder without a readable manifest.json is never replaced, even with overwrite."""
    target = tmp_path / "work"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "data.bin").write_bytes(os.urandom(100))
    if manifest is not None:
        (target / fmt.MANIFEST_FILE).write_text(manifest)
    before = _snapshot(target)
    with pytest.raises(PackageError, match="not an edge package"):
        export(tiny_hf, target, overwrite=True, progress=False)
    assert _snapshot(target) == before


def test_force_refuses_the_folder_holding_the_source(smollm2_gguf: Path, tmp_path: Path) -> None:
    """The folder holding the source GGUF (by path, through a link, or a parent) is refused."""
    home = tmp_path / "models"
    home.mkdir()
    source = home / "model.gguf"
    os.link(smollm2_gguf, source)
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.gguf"
    link.symlink_to(source)
    for src, out in ((source, home), (link, home), (source, tmp_path), (source, source)):
        with pytest.raises(PackageError, match="source"):
            export(src, out, overwrite=True, progress=False)
    assert source.stat().st_size == smollm2_gguf.stat().st_size
    assert sorted(p.name for p in home.iterdir()) == ["model.gguf"]


def test_quantize_refuses_its_source_and_the_folder_holding_it(
    tiny_hf: Path, package: Path
) -> None:
    """quantize_package never writes over its source package or a folder above it."""
    before = _snapshot(package.parent)
    for out in (package, package.parent):
        with pytest.raises(PackageError, match="source"):
            quantize_package(
                package, out, ExportConfig(quant="int8"), overwrite=True, progress=False
            )
    assert _snapshot(package.parent) == before


def test_symlinked_output_is_refused(tiny_hf: Path, tmp_path: Path) -> None:
    """An output that is a symbolic link (to an empty folder, even) is refused: the rename
    would act on the link, not on the folder it names."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(PackageError, match="not a directory"):
        export(tiny_hf, tmp_path / "alias", overwrite=True, progress=False)
    assert list((tmp_path / "real").iterdir()) == []


# ---- claiming the output --------------------------------------------------------------------


def test_empty_existing_folder_is_used_without_force(tiny_hf: Path, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    export(tiny_hf, target, progress=False)
    open_package(target, verify="full")


def test_current_folder_as_output(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o .` in an empty folder exports into it (staged beside it, not inside it)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    export(tiny_hf, ".", progress=False)
    open_package(here, verify="full")
    assert _temporaries(tmp_path) == []


def test_missing_output_is_claimed_before_the_write(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the package is written, the output exists (nobody else can create it); a file
    someone puts into the claimed folder meanwhile is kept, and the export is refused."""
    target = tmp_path / "new"
    real_write = export_module._write_package

    def write_and_intrude(*args: object) -> None:
        with pytest.raises(FileExistsError):
            os.mkdir(target)  # the claim
        (target / "theirs.txt").write_text("someone else's\n")
        real_write(*args)

    monkeypatch.setattr(export_module, "_write_package", write_and_intrude)
    with pytest.raises(PackageError, match="someone else"):
        export(tiny_hf, target, progress=False)
    assert sorted(os.listdir(target)) == ["theirs.txt"]
    assert _temporaries(tmp_path) == []


def test_failed_export_removes_only_its_own_claim(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure removes the empty folder the export created, never a folder that was there."""

    def fail(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(export_module, "_write_package", fail)
    with pytest.raises(RuntimeError):
        export(tiny_hf, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        export(tiny_hf, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine").is_dir()
    assert _temporaries(tmp_path) == []


# ---- outputs that cannot be written ---------------------------------------------------------


def test_output_under_a_regular_file_is_an_output_error(
    tiny_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep\n")
    with pytest.raises(OutputError, match=r"notes\.txt is not a directory"):
        export(tiny_hf, notes / "pkg", progress=False)
    assert main(["export", str(tiny_hf), "-o", str(notes / "pkg"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "edge export: error:" in err and "not a directory" in err and "Traceback" not in err
    assert notes.read_text() == "keep\n"


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `folder`, or a skip where mounting is not allowed."""
    folder.mkdir()
    mount = shutil.which("mount")
    if (
        os.geteuid() != 0
        or mount is None
        or subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _read_only(folder: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits: remount read-only instead
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    else:
        folder.chmod(0o555)


def test_read_only_output_folder_is_an_output_error(tiny_hf: Path, tmp_path: Path) -> None:
    """With --force over a package in a read-only folder: OutputError, the package intact.
    As root this needs a tmpfs remounted read-only; elsewhere the folder is chmod 555."""
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            folder = stack.enter_context(_tmpfs(tmp_path / "ro", "4m"))
        else:
            folder = tmp_path / "ro"
            folder.mkdir()
            stack.callback(folder.chmod, 0o755)
        package = export(tiny_hf, folder / "pkg", progress=False)
        before = _snapshot(folder)
        _read_only(folder)
        with pytest.raises(OutputError, match="not writable"):
            export(tiny_hf, package, overwrite=True, progress=False)
        with pytest.raises(OutputError, match="not writable"):
            export(tiny_hf, folder / "new", progress=False)
        assert _snapshot(folder) == before
        open_package(package, verify="full")


def test_full_disk_keeps_the_old_package(tiny_hf: Path, tmp_path: Path) -> None:
    """A real ENOSPC (a 512 KiB tmpfs holding a ~380 KB package) in the middle of an overwrite:
    OutputError, staging removed, the old package intact."""
    with _tmpfs(tmp_path / "small", "512k") as folder:
        package = export(tiny_hf, folder / "pkg", progress=False)
        before = _snapshot(folder)
        with pytest.raises(OutputError, match="free space"):
            export(tiny_hf, package, overwrite=True, progress=False)
        assert _snapshot(folder) == before
        open_package(package, verify="full")


def test_no_space_while_writing_weights_keeps_the_old_package(
    tiny_hf: Path, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no small filesystem can be mounted: ENOSPC raised at the boundary where weights
    are written (`WeightFileWriter.add`), as a full disk would; same promises as above."""
    before = _snapshot(package.parent)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fmt.WeightFileWriter, "add", full)
    with pytest.raises(OutputError, match="No space left") as info:
        export(tiny_hf, package, overwrite=True, progress=False)
    assert isinstance(info.value, OSError) and "Nothing that was there before" in str(info.value)
    assert _snapshot(package.parent) == before


# ---- what killed exports left ---------------------------------------------------------------


def test_stale_temporaries_of_dead_exports_are_cleaned(tiny_hf: Path, package: Path) -> None:
    """A dead export's staging folder is removed, a live one's is kept; a dead export's backup
    is removed when its target exists, and put back when the target is missing."""
    folder = package.parent
    dead, alive = _dead_pid(), os.getpid()
    (folder / f".pkg.partial-{dead}-0a0b").mkdir()
    (folder / f".pkg.partial-{dead}-0a0b" / "block.000.bin").write_bytes(b"half")
    (folder / f".pkg.partial-{alive}-0c0d").mkdir()
    shutil.copytree(package, folder / f".pkg.old-{dead}-0e0f")
    shutil.copytree(package, folder / f".gone.old-{dead}")
    export(tiny_hf, folder / "other", progress=False)
    assert _temporaries(folder) == [f".pkg.partial-{alive}-0c0d"]
    open_package(folder / "gone", verify="full")  # restored from its backup
    assert sorted(os.listdir(folder)) == [f".pkg.partial-{alive}-0c0d", "gone", "other", "pkg"]


# ---- the CLI --------------------------------------------------------------------------------


def test_cli_force_refusals_exit_2_with_a_clear_message(
    tiny_hf: Path, package: Path, capsys: pytest.CaptureFixture
) -> None:
    (package / "notes.txt").write_text("mine\n")
    assert main(["export", str(tiny_hf), "-o", str(package), "--force", "-q"]) == 2
    err = capsys.readouterr().err
    assert "not part of its edge package" in err and "notes.txt" in err
    assert main(["export", str(tiny_hf), "-o", str(tiny_hf), "--force", "-q"]) == 2
    assert "source" in capsys.readouterr().err
    assert (package / "notes.txt").read_text() == "mine\n"
    assert sorted(os.listdir(tiny_hf)) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
