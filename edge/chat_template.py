"""A model's chat template: Jinja code that comes with the package, rendered in a sandbox.

The template renders in jinja's immutable sandbox (no file or attribute access beyond data),
as transformers renders it (so prompts match byte for byte), with bounds on what one compile or
render may cost in time and size. A real prompt is far smaller: it must fit the context window.
"""

from __future__ import annotations

import ctypes
import json
import threading
from datetime import datetime
from typing import Any

from jinja2 import Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import loopcontrols
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from edge.errors import PackageError


class ChatTemplateError(PackageError):
    """The model's chat template failed to render these messages."""


# A chat template is code that comes with the package: it renders in jinja's immutable sandbox
# (no file or attribute access beyond data), and these bound what a render may cost. A real
# prompt is far smaller: it must fit the context window.
MAX_TEMPLATE_CHARS = 1 << 22  # the output, and any one string, list or number it builds
TEMPLATE_SECONDS = 5.0  # wall time of one render (jinja's MAX_RANGE does not bound nested loops)
_WIDTH_FILTERS = ("center", "indent", "wordwrap")  # an int argument is a size to allocate
# What compiling or rendering a broken or hostile template raises (our ChatTemplateError, from
# raise_exception, is a ValueError); anything else is edge's own bug and propagates.
_RENDER_FAILURES = (
    TemplateError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
    SyntaxError,
    MemoryError,
)


class _Deadline(BaseException):
    """Raised inside a render that ran past TEMPLATE_SECONDS; a BaseException so that neither
    the template nor jinja's runtime (which catch Exception) can swallow it."""


def _raise(message: str) -> None:
    raise ChatTemplateError(f"the model's chat template refused these messages: {message}")


def _check_size(value: Any) -> Any:
    """`value`, unless it is a string, container or number too large for any real prompt."""
    if isinstance(value, int):
        too_big = abs(value).bit_length() > 64
    else:
        too_big = (
            isinstance(value, str | bytes | list | tuple | dict) and len(value) > MAX_TEMPLATE_CHARS
        )
    if too_big:
        raise SecurityError(
            f"the template built a value larger than edge allows "
            f"({MAX_TEMPLATE_CHARS} items, or a 64-bit integer)"
        )
    return value


def _check_width(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TEMPLATE_CHARS:
        raise SecurityError(f"a width of {value} is larger than edge allows ({MAX_TEMPLATE_CHARS})")


class _BoundedNamespace(Namespace):
    """jinja's `namespace()`, the one mutable object a template has: it must not grow a value
    without bound (doubling a string each loop iteration)."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, _check_size(value))


class _ChatEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with the operators and calls that could allocate without bound checked."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and abs(right) > 64 and abs(left) > 1:
            raise SecurityError(f"{left} ** {right} is larger than edge allows")
        if operator == "*" and not ints:
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_TEMPLATE_CHARS
                ):
                    raise SecurityError(
                        f"a sequence of {len(seq)} items * {n} is larger "
                        f"than edge allows ({MAX_TEMPLATE_CHARS} items)"
                    )
        return _check_size(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            _check_size(value)
        if isinstance(getattr(obj, "__self__", None), str):  # "x".center(n), .ljust(n), ...
            for value in (*args, *kwargs.values()):
                _check_width(value)
        return _check_size(super().call(context, obj, *args, **kwargs))


def _width_filter(function: Any) -> Any:
    def checked(value: Any, *args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            _check_width(arg)
        return function(value, *args, **kwargs)

    return checked


def _tojson(value: Any, indent: int | None = None) -> str:
    _check_width(indent)
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _chat_environment() -> ImmutableSandboxedEnvironment:
    # The same environment transformers renders templates in, so prompts match byte for byte.
    env = _ChatEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    for name in _WIDTH_FILTERS:
        env.filters[name] = _width_filter(env.filters[name])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["namespace"] = _BoundedNamespace
    return env


def _template_failure(exc: BaseException, doing: str) -> ChatTemplateError:
    if isinstance(exc, ChatTemplateError):  # raise_exception(...) in the template: its message
        return exc
    what = type(exc).__name__
    line = getattr(exc, "lineno", None)
    where = f" (line {line})" if isinstance(exc, TemplateError) and line else ""
    return ChatTemplateError(
        f"the model's chat template failed to {doing}{where}: {what}: {str(exc)[:300]}"
    )


def _interrupt(thread: threading.Thread) -> None:
    """Raise _Deadline in `thread` at its next bytecode (a template loop is Python code)."""
    api = getattr(ctypes, "pythonapi", None)  # CPython's; elsewhere the daemon thread runs on
    if thread.ident is not None and api is not None:
        api.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Deadline))


def _run_limited(work: Any, what: str) -> Any:
    """`work()` on a worker thread, stopped after TEMPLATE_SECONDS: a template is code from the
    package, and a loop in it must not hang the caller."""
    result: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(work())
        except (Exception, _Deadline) as exc:  # handed to the calling thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=target, name="edge-chat-template", daemon=True)
    thread.start()
    try:
        thread.join(TEMPLATE_SECONDS)
    finally:  # also on Ctrl-C: the render must not go on in the background
        if thread.is_alive() and not result and not failure:
            _interrupt(thread)
            thread.join(1.0)
    if result:
        return result[0]
    if not failure or isinstance(failure[0], _Deadline):
        raise ChatTemplateError(
            f"the model's chat template did not {what} within "
            f"{TEMPLATE_SECONDS:g} s; it is broken or hostile"
        )
    if isinstance(failure[0], _RENDER_FAILURES):
        raise _template_failure(failure[0], what) from failure[0]
    raise failure[0]


def _render(template: Template, context: dict[str, Any]) -> str:
    """The rendered text, stopped once it is longer than any prompt could be."""
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(**context):
        size += len(chunk)
        if size > MAX_TEMPLATE_CHARS:
            raise SecurityError(
                f"the rendered prompt is longer than {MAX_TEMPLATE_CHARS} characters"
            )
        chunks.append(chunk)
    return "".join(chunks)


class ChatTemplate:
    """One package's template, compiled on creation (bounded like a render)."""

    def __init__(self, source: str) -> None:
        self._template: Template = _run_limited(
            lambda: _chat_environment().from_string(source), "compile"
        )

    def render(self, context: dict[str, Any]) -> str:
        """The prompt for `context` (messages, add_generation_prompt, special tokens)."""
        return _run_limited(lambda: _render(self._template, context), "render")
