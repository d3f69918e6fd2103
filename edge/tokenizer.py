"""The runtime tokenizer: `tokenizers` (Rust, no torch) plus the model's own Jinja chat template."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as FastTokenizer

from edge.errors import PackageError
from edge.format import TokenizerInfo


class ChatTemplateError(PackageError):
    """The model's chat template failed to render these messages."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _chat_environment() -> ImmutableSandboxedEnvironment:
    # The same environment transformers renders templates in, so prompts match byte for byte.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                  indent=indent)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class Tokenizer:
    """Encode, decode and render chat prompts for one package.

    >>> tok = Tokenizer.from_package(package_dir, manifest.tokenizer)  # doctest: +SKIP
    >>> tok.decode(tok.encode("Hello"))  # doctest: +SKIP
    'Hello'
    """

    def __init__(self, path: str | os.PathLike[str], info: TokenizerInfo) -> None:
        try:
            self._tok = FastTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise PackageError(f"cannot read tokenizer {path}: {exc}") from exc
        self.info = info
        self._template = (_chat_environment().from_string(info.chat_template)
                          if info.chat_template else None)

    @classmethod
    def from_package(cls, root: str | os.PathLike[str], info: TokenizerInfo) -> Tokenizer:
        return cls(Path(root, info.file), info)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def vocab(self) -> dict[str, int]:
        """Token string -> id, added tokens included (to compare two models' tokenizers)."""
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.info.eos_token_ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def apply_chat_template(self, messages: Sequence[dict[str, Any]],
                            add_generation_prompt: bool = True, **extra: Any) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's own template."""
        if self._template is None:
            raise ChatTemplateError("this model has no chat template; use generate() instead")
        return self._template.render(messages=list(messages),
                                     add_generation_prompt=add_generation_prompt,
                                     bos_token=self.info.bos_token or "",
                                     eos_token=self.info.eos_token or "", **extra)
