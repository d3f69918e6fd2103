"""Typed errors a user of edge can catch.

Every error a user can cause (a bad file, a bad value, a missing model) is an `EdgeError`;
most are also `ValueError`s so generic callers still catch them. `assert` is kept for internal
invariants only.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error edge raises on purpose."""


class PackageError(EdgeError, ValueError):
    """A path is not a usable edge package (missing manifest, graph or weight file)."""


class IntegrityError(PackageError):
    """A file's size or sha256 differs from what its manifest (or registry) promises."""


class FormatVersionError(PackageError):
    """The package was written by a newer edge than this one can read."""


class UnsupportedModelError(EdgeError, ValueError):
    """A source (GGUF, Hugging Face folder) has an architecture or layout edge cannot export."""


class UnknownModelError(EdgeError, ValueError):
    """A model name that is neither in the registry nor an existing path."""


class PullError(EdgeError, RuntimeError):
    """Downloading or assembling a registered model failed."""


class InvalidSamplingError(EdgeError, ValueError):
    """A sampling or generation parameter is out of its allowed range."""


class ConfigError(EdgeError, ValueError):
    """A run-time setting (context size, threads, benchmark sizes) is out of its allowed range."""


class ContextOverflowError(EdgeError, ValueError):
    """A prompt (plus the tokens asked for) does not fit the model's context window."""


class TokenizerMismatchError(EdgeError, ValueError):
    """An exported tokenizer does not encode or decode exactly like its source."""


class BudgetTooSmallError(ConfigError):
    """A memory budget cannot hold the resident parts, one streamed unit, the KV cache and the
    runtime; the message states the smallest budget that would work."""

    def __init__(self, message: str, *, budget: int = 0, minimum: int = 0) -> None:
        super().__init__(message)
        self.budget = budget
        self.minimum = minimum

    def __reduce__(self) -> tuple:
        # Pickle rebuilds an error from its args alone; carry the fields as state too
        # (errors cross process boundaries in the cluster).
        return (type(self), (str(self),), {"budget": self.budget, "minimum": self.minimum})


class StreamReadError(PackageError):
    """Reading a streamed part's weights from disk failed (short read, truncated or missing
    file, I/O error); the message names the part and the file."""


class BackendError(EdgeError, RuntimeError):
    """A backend failed while running a segment; the message names the backend, its device and
    the part range. The engine that raised it works again after `reset()`."""

    def __init__(
        self, message: str, backend: str = "", device: str = "", start: int = -1, end: int = -1
    ) -> None:
        super().__init__(message)
        self.backend, self.device, self.start, self.end = backend, device, start, end

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.backend, self.device, self.start, self.end))


class CacheDirError(ConfigError):
    """edge's cache folder cannot hold what must be stored there (a pulled model, an exported
    package); the message names the folder and how to choose another ($EDGE_CACHE_DIR)."""


class OutputError(EdgeError, OSError):
    """An export's output cannot be written (under a regular file, read-only, out of space); the
    message names the path and what to do. Nothing that was there before is lost."""


class InvalidTokenError(EdgeError, ValueError):
    """A prompt given as token ids holds something that is not an id of this model's vocabulary
    (negative, too large, not an integer)."""
