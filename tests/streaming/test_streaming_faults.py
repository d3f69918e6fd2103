"""Faults while streaming: a truncated weight file and an I/O error in the middle of a step.

Both must surface as `StreamReadError` naming the block, leave the KV cache position where it
was (the failed step did not happen), and leave the engine usable: once the cause is gone,
`engine.reset()` and the same prompt give the same tokens as before the fault. The SmolLM2
int4 package is copied first (the session fixture is read-only) and streamed at the minimum
budget: every block goes through a window of one, so block 7 is read during the step that
needs it, never ahead of a fault set up between steps.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.errors import StreamReadError
from edge.package import open_package
from edge.streaming import streamed_state

BLOCK = "block.7"
TOKENS = 8


@pytest.fixture
def damaged_copy(streaming_int4_package: Path, tmp_path: Path) -> Path:
    """A private copy of the int4 package, free to truncate."""
    return Path(shutil.copytree(streaming_int4_package, tmp_path / "pkg"))


def _block_file(root: Path) -> Path:
    files = {t.file for t in open_package(root, verify="sizes").manifest.part(BLOCK).tensors}
    assert len(files) == 1, files
    return root / files.pop()


def test_streaming_truncated_block_raises_and_recovers(damaged_copy: Path, streaming) -> None:
    """Truncating block 7's weight file mid-generation: the next decode step raises
    StreamReadError naming block.7 and the file, the cache position is unchanged, a new
    generation fails the same way; after the file is restored and engine.reset(), the model
    generates the same tokens as before the damage."""
    minimum = streaming.minimum_budget(open_package(damaged_copy, verify="sizes"))
    with streaming.streamed_model(damaged_copy, minimum) as model:
        engine = model.engine
        plan = streamed_state(engine).plan
        assert plan.policy.window == 1 and BLOCK in plan.policy.streamed
        before = streaming.greedy_tokens(model, n=TOKENS)

        engine.reset()
        logits = engine.prefill(model.tokenizer.encode(streaming.PROMPT))
        position = engine.position
        path = _block_file(damaged_copy)
        original = path.read_bytes()
        os.truncate(path, len(original) // 2)
        with pytest.raises(StreamReadError, match=r"block\.7") as info:
            engine.decode(int(logits[0].argmax()))
        assert path.name in str(info.value) and "truncated" in str(info.value)
        assert engine.position == position
        with pytest.raises(StreamReadError, match=r"block\.7"):
            streaming.greedy_tokens(model, n=TOKENS)

        path.write_bytes(original)
        engine.reset()
        assert engine.position == 0
        assert streaming.greedy_tokens(model, n=TOKENS) == before


def test_streaming_read_error_raises_and_recovers(
    damaged_copy: Path, streaming, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError from the store's read of block 7 (injected once, through the prefetcher's
    WeightStore.read_into): the decode step raises StreamReadError naming block.7 and the
    error, the cache position is unchanged, and the same step run again gives exactly the
    logits of an undisturbed run; after engine.reset() the tokens are those of before."""
    minimum = streaming.minimum_budget(open_package(damaged_copy, verify="sizes"))
    with streaming.streamed_model(damaged_copy, minimum) as model:
        engine = model.engine
        before = streaming.greedy_tokens(model, n=TOKENS)
        ids = model.tokenizer.encode(streaming.PROMPT)
        engine.reset()
        token = int(engine.prefill(ids)[0].argmax())
        undisturbed = engine.decode(token)

        store = streamed_state(engine).prefetcher.store
        read_into = store.read_into
        failures: list[str] = []

        def flaky_read_into(name: str, buffer: np.ndarray):
            if name == BLOCK and not failures:
                failures.append(name)
                raise OSError(errno.EIO, "injected I/O error")
            return read_into(name, buffer)

        engine.reset()
        engine.prefill(ids)
        position = engine.position
        monkeypatch.setattr(store, "read_into", flaky_read_into)
        with pytest.raises(StreamReadError, match=r"block\.7") as info:
            engine.decode(token)
        assert failures == [BLOCK]
        assert "injected I/O error" in str(info.value)
        assert engine.position == position
        # The failed step restarted the window: the same step runs again, unchanged.
        np.testing.assert_array_equal(engine.decode(token), undisturbed)

        engine.reset()
        assert streaming.greedy_tokens(model, n=TOKENS) == before
