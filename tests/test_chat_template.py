"""A package's chat template is untrusted code: it is compiled only when chat is used, and a
broken or hostile one fails with a ChatTemplateError, bounded in time and size, never a hang,
a memory blow-up or a traceback from jinja."""

from __future__ import annotations

import threading
import time

import pytest
from tokenizers import Tokenizer as FastTokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

import edge.chat_template as chat_template_module
from edge.errors import PackageError
from edge.format import TokenizerInfo
from edge.tokenizer import ChatTemplateError, Tokenizer

MESSAGES = [{"role": "user", "content": "hello"}]


def _tokenizer(template: str | None) -> Tokenizer:
    """A tiny in-memory word-level tokenizer with `template` as its chat template."""
    fast = FastTokenizer(WordLevel({"[UNK]": 0, "hello": 1, "<eos>": 2}, unk_token="[UNK]"))
    fast.pre_tokenizer = Whitespace()
    info = TokenizerInfo(
        file="tokenizer.json",
        chat_template=template,
        bos_token=None,
        eos_token="<eos>",
        eos_token_ids=(2,),
    )
    return Tokenizer(fast.to_str().encode(), info)


@pytest.fixture
def short_limit(monkeypatch: pytest.MonkeyPatch) -> float:
    """Half a second per render, so that a hostile loop costs the test suite little."""
    monkeypatch.setattr(chat_template_module, "TEMPLATE_SECONDS", 0.5)
    return 0.5


def test_a_good_template_renders() -> None:
    tok = _tokenizer(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}{{ 2 ** 10 }}"
        "{{ 'ab' * 2 }}{{ messages|tojson }}"
    )
    assert tok.apply_chat_template(MESSAGES) == (
        '<user>hello<assistant>1024abab[{"role": "user", "content": "hello"}]'
    )


def test_a_broken_template_fails_only_when_chat_is_used() -> None:
    """Loading (and plain encoding) works; chat raises a ChatTemplateError, a PackageError,
    naming the line of the syntax error."""
    tok = _tokenizer("{% for m in messages %}\n{{ m.content }\n")
    assert tok.encode("hello") == [1]
    assert tok.has_chat_template
    with pytest.raises(ChatTemplateError, match=r"compile \(line 2\)") as info:
        tok.apply_chat_template(MESSAGES)
    assert isinstance(info.value, PackageError)


def test_no_template_is_a_clear_error() -> None:
    tok = _tokenizer(None)
    assert not tok.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template(MESSAGES)


def test_raise_exception_keeps_the_template_message() -> None:
    tok = _tokenizer("{{ raise_exception('Conversation roles must alternate') }}")
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        tok.apply_chat_template(MESSAGES)


@pytest.mark.parametrize(
    "template",
    [
        "{{ undefined_thing.attribute }}",  # UndefinedError
        "{{ messages[5].content }}",  # an index past the end
        "{{ 1 / 0 }}",  # ZeroDivisionError
        "{{ messages[0].content + 1 }}",  # TypeError
        "{{ ''.__class__.__mro__ }}",  # the sandbox's SecurityError
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",  # RecursionError
    ],
)
def test_render_errors_are_chat_template_errors(template: str) -> None:
    with pytest.raises(ChatTemplateError, match="chat template failed to render"):
        _tokenizer(template).apply_chat_template(MESSAGES)


@pytest.mark.parametrize(
    "template",
    [
        # Nested loops: jinja caps one range() at 100000 items, not the product.
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% for c in r %}"
        "{% endfor %}{% endfor %}{% endfor %}",
    ],
)
def test_endless_loops_stop_at_the_time_limit(template: str, short_limit: float) -> None:
    tok = _tokenizer(template)
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match="did not render within"):
        tok.apply_chat_template(MESSAGES)
    assert time.monotonic() - started < short_limit + 2.0
    # The render thread was stopped, not left spinning in the background.
    deadline = time.monotonic() + 2.0
    while any(t.name == "edge-chat-template" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the template thread is still running"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "template",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}"
        "{% endfor %}",  # output without bound
        "{{ 'x' * 1000000000 }}",
        "{{ [0] * 1000000000 }}",
        "{{ 10 ** 10 ** 8 }}",
        "{{ 'x'|center(1000000000) }}",
        "{{ 'x'.ljust(1000000000) }}",
        "{{ messages|tojson(indent=1000000000) }}",
        # Doubling a string in the one mutable object, or through a macro's arguments.
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}'
        "{% endfor %}",
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% endif %}{% endmacro %}"
        "{{ d('x', 64) }}",
        "{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}",
    ],
)
def test_unbounded_output_or_values_are_refused(template: str, short_limit: float) -> None:
    """Refused by the size limits (MAX_TEMPLATE_CHARS), well before the time limit."""
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"larger than edge allows|longer than"):
        _tokenizer(template).apply_chat_template(MESSAGES)
    assert time.monotonic() - started < short_limit


def test_a_deeply_nested_template_fails_to_compile_cleanly() -> None:
    tok = _tokenizer("{% if true %}" * 400 + "x" + "{% endif %}" * 400)
    with pytest.raises(ChatTemplateError, match="compile"):
        tok.apply_chat_template(MESSAGES)
