"""The speculative generation loop: draft, verify in one target pass, commit, roll back.

The target's KV cache holds every committed token but the newest (the *pending* token, whose
logits are not computed yet). A round feeds [pending, d1..dk] to the target in one pass, keeps
the accepted prefix plus the target's own next token, and rewinds the cache past the rest.
With `SpeculativeConfig.tree`, a round first offers a token tree (`tree_rounds`), verified in
one pass over [pending, nodes...], the target's path through it committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.generate import (
    GenerationConfig,
    GenerationResponse,
    ResponseEmitter,
    SpeculationStats,
    check_prompt,
    prefill_prompt,
)
from edge.runner import Runner
from edge.sampling import Sampler
from edge.speculative.acceptance import accept_draft
from edge.speculative.calibration import load_calibration, save_calibration
from edge.speculative.controller import DraftController, SpeculativeConfig
from edge.speculative.drafts import ChainedDraft, Draft, DraftSource, ModelDraft
from edge.speculative.token_tree import TokenTree, accept_tree, exact_prefix
from edge.speculative.tree_rounds import TREE_KEY, TreeSpeculation
from edge.tokenizer import Tokenizer

log = logging.getLogger("edge.speculative")


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity), which threads can use at once."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _warn_if_batch_variant(target: Runner) -> None:
    if target.rounds_by_step():
        log.warning(
            "the target rounds activations to int8 (accuracy_level 4): a pass over k tokens "
            "and k one-token passes differ by up to ~0.3 logits, so speculative output equals "
            "plain output (greedy, or sampled with the same seed) except where two tokens "
            "nearly tie; load with exact=True (--exact), or export with --quant w8a8, for "
            "bit-for-bit equality"
        )


class SpeculativeDecoder:
    """Generates with `target`, drafting with `draft`. The output equals the target's plain
    decoding token for token: greedy, or sampled with the same seed (see `acceptance`), so a
    seed fixes the text whatever the draft, its k, or the timings the controller follows.

    With `calibration` (a file path), what the controller learns is loaded at start and saved
    after each request, so the next process starts informed (`edge.load` does this).
    """

    def __init__(
        self,
        target: Runner,
        draft: DraftSource,
        config: SpeculativeConfig | None = None,
        calibration: Path | None = None,
    ) -> None:
        self.target = target
        self.draft = draft
        self.config = config or SpeculativeConfig()
        self.controller = DraftController(self.config)
        self.calibration = calibration
        if calibration is not None and self.config.adaptive:
            learned = load_calibration(calibration)
            if learned is not None:
                self.controller.restore(learned)
        _warn_if_batch_variant(target)
        tree = self.config.tree
        self.trees = TreeSpeculation(tree, target, self.controller) if tree else None
        self.sources = list(draft.sources) if isinstance(draft, ChainedDraft) else [draft]
        models = [source for source in self.sources if isinstance(source, ModelDraft)]
        self.model = models[0] if models else None  # the source a PEARL lookahead runs on
        if self.config.parallel and self.model is not None:
            self._check_parallel(self.model)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-draft")
        self._ahead: tuple[list[int], Future[Draft]] | None = None

    def _check_parallel(self, model: ModelDraft) -> None:
        """Overlap needs the draft on cores (or a device) of its own: on shared cores the
        lookahead only slows verification. Then draft sequentially, and say why."""
        target, draft = self.target.cpu_threads(), model.engine.cpu_threads()
        cores = usable_cpus()
        if target is not None and draft is not None and target + draft > cores:
            log.warning(
                "parallel drafting needs cores of its own: target (%d threads) and draft (%d) "
                "would share this machine's %d cores, so drafting runs sequentially; give them "
                "disjoint threads (--threads, --draft-threads) or put the draft on another "
                "device",
                target,
                draft,
                cores,
            )
            self.config = replace(self.config, parallel=False)
            self.controller.config = self.config

    def stream(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        cached_prefix: int = 0,
    ) -> Iterator[GenerationResponse]:
        check_prompt(prompt_ids, self.target.max_context)
        sampler = Sampler(config.sampling, self.target.spec.vocab_size)
        # The draft model chooses with the target's noise (the seed drawn for this request
        # when it gave none), which is what makes it agree with the target's samples.
        drafting = replace(config.sampling, seed=sampler.seed)
        for source in self.sources:
            if isinstance(source, ModelDraft):
                source.set_sampling(drafting)
        self.controller.start_request()
        logits, prompt_tps = prefill_prompt(self.target, prompt_ids, cached_prefix)
        out = ResponseEmitter(tokenizer, prompt_ids, config, self.target.max_context, prompt_tps)
        run = _Run(self, sampler, out)
        token = sampler.choose(logits, out.history, len(out.history))
        yield (response := run.emit(logits, token, False))
        try:
            run.resume()  # the caller holds each response on its own time, not the decoder's
            while not response.finish_reason:
                for response in run.round():
                    yield response
                    if response.finish_reason:
                        break
                    run.resume()
        finally:
            self._drop_lookahead()
            if self.calibration is not None and self.config.adaptive:
                save_calibration(self.calibration, self.controller.snapshot())

    def _drop_lookahead(self) -> None:
        if self._ahead is not None:
            future = self._ahead[1]
            # A lookahead not started yet is cancelled; a running one is waited for: the
            # draft engine must be idle before reuse. (exception() on a cancelled future
            # would raise CancelledError.)
            if not future.cancel():
                future.exception()
            self._ahead = None

    def choose_draft(self, history: list[int], room: int, remaining: int | None = None) -> Draft:
        """The first source's proposal whose kind the controller takes, cut to its best k.

        A free source (lookup) is asked for as much as fits and cut afterwards; a model is
        asked for exactly the k the controller picks for it. Empty: decode plainly. (Taking
        the best predicted source instead of the first was tried: a draft model, once
        measured, keeps winning over lookup kinds that never get the rounds to show their
        acceptance, and on code that copies its prompt it lost a third of lookup's speed.)
        Empty too when the controller wants a plain step measured.
        """
        controller = self.controller
        if controller.plain_due():
            return Draft([])
        for source in self.sources:
            if getattr(source, "free", False):
                proposal = source.propose(history, min(room, self.config.max_draft))
                if not proposal.tokens:
                    continue
                k = min(controller.next_k(proposal.key), room)
                if k:
                    return proposal.head(k)
            else:
                behind = source.behind(history) if isinstance(source, ModelDraft) else 0
                k = min(controller.next_k(source.name, behind, remaining), room)
                if k:
                    return self.propose(source, history, k)
        return Draft([])

    def propose(self, source: DraftSource, history: list[int], k: int) -> Draft:
        """The draft for `history`, reusing a lookahead drafted during the last verification."""
        if self._ahead is not None and source is self.model:
            context, future = self._ahead
            self._ahead = None
            ahead = future.result()
            extra = history[len(context) :]
            if history[: len(context)] == context and ahead.tokens[: len(extra)] == extra:
                tokens = ahead.tokens[len(extra) :]
                if tokens:
                    return Draft(tokens[:k], key=ahead.key, source=ahead.source)
        return source.propose(history, k)

    def draft_ahead(self, context: list[int], k: int) -> None:
        """Start drafting after `context` (history + the draft under verification)."""
        if self.config.parallel and self.model is not None:
            self._drop_lookahead()
            self._ahead = (context, self._pool.submit(self.model.propose, context, k + 1))

    def close(self) -> None:
        self._drop_lookahead()
        self._pool.shutdown(wait=True)


class _Run:
    """One request's state: the pending token, counters, clocks, and the round logic."""

    def __init__(self, decoder: SpeculativeDecoder, sampler: Sampler, out: ResponseEmitter) -> None:
        self.d, self.sampler, self.out = decoder, sampler, out
        self.drafted = self.accepted = self.passes = self.committed = 0
        # The decoder's own wall time since it handed over the first token (drafting, the
        # draft model's prefill and catch-up, verification, rejected tokens, waiting on the
        # lookahead thread, emitting), not the time the caller held a response; and the part
        # of it spent emitting tokens, which plain decoding spends alike.
        self.seconds = self.emit_seconds = 0.0
        self._resumed: float | None = None  # None until the first token was handed over
        self.draft_failed = False
        self.by_source: dict[str, list[int]] = {}  # source -> [drafted, accepted]
        self.carry: list[int] = []  # tokens the last tree pass kept beyond what it committed

    def resume(self) -> None:
        """The caller asks for the next token: the decoder's clock runs again."""
        self._resumed = time.perf_counter()

    def speedup(self) -> float | None:
        """Plain decoding's time for the tokens committed so far (plain steps this process
        measured, plus the same emitting) over the time this response took for them; None
        before a plain step was measured here (a remembered one may come from other load)."""
        controller = self.d.controller
        if not controller.plain_measured or not self.committed or self.seconds <= 0:
            return None
        plain = self.committed * controller.plain_step.value + self.emit_seconds
        return plain / self.seconds

    def stats(self) -> SpeculationStats:
        return SpeculationStats(
            self.drafted,
            self.accepted,
            self.passes,
            self.committed,
            self.speedup(),
            self.d.controller.active and not self.draft_failed,
            tuple((name, *counts) for name, counts in self.by_source.items()),
        )

    def round(self) -> Iterator[GenerationResponse]:
        started = time.perf_counter()
        target = self.d.target
        room = min(target.max_context - target.position, target.chunk) - 1
        trees = self.d.trees
        if trees is not None and room >= 1 and not self.d.controller.plain_due():
            tree = trees.choose(self.out.history, room, self.carry)
            self.carry = []
            if tree is not None:
                yield from self._verify_tree(tree, time.perf_counter() - started)
                return
        draft = Draft([]) if self.draft_failed or room < 1 else self._propose(room)
        if not draft.tokens:
            yield from self._plain_step()
            return
        yield from self._verify(draft, time.perf_counter() - started)

    def _propose(self, room: int) -> Draft:
        try:
            remaining = self.out.config.max_tokens - self.out.generated
            return self.d.choose_draft(self.out.history, room, remaining)
        except Exception as error:  # a draft device that fails must not cost the request
            log.warning(
                "draft %s failed (%s); continuing with plain decoding", self.d.draft.name, error
            )
            self.draft_failed = True
            self.d._ahead = None
            return Draft([])

    def _plain_step(self) -> Iterator[GenerationResponse]:
        # A lookahead still drafting would slow the step it is measured by; its wait is the
        # response's time, not the plain step's.
        self.d._drop_lookahead()
        started = time.perf_counter()
        history = self.out.history
        logits = self.d.target.decode(history[-1])
        token = self.sampler.choose(logits, history, len(history))
        seconds = time.perf_counter() - started
        self.d.controller.record_plain(seconds)
        if self.d.trees is not None:
            self.d.trees.record_pass(1, seconds)
            self.d.trees.observe(history[-1:], logits[None])
        self._count(1)
        yield self.emit(logits, token, False)

    def _verify(self, draft: Draft, draft_seconds: float) -> Iterator[GenerationResponse]:
        started = time.perf_counter()
        target, history = self.d.target, self.out.history
        base = target.position  # the cache holds history[:-1]
        fed = [history[-1], *draft.tokens]
        self.d.draft_ahead(history + draft.tokens, len(draft.tokens))
        logits = target.verify(fed)  # [k+1, V], the arithmetic of decoding
        n, token = accept_draft(self.sampler, logits, draft.tokens, history)
        target.rewind(base + 1 + n)
        if self.d.trees is not None:
            self.d.trees.record_pass(len(fed), time.perf_counter() - started)
            self.d.trees.observe(fed[: n + 1], logits[: n + 1])
        verify_seconds = time.perf_counter() - started
        self.d.controller.record_catch_up(draft.setup_tokens, draft.setup_seconds)
        # A source's first catch-up in a request is the prompt's prefill: paid once, sunk.
        recurring = draft.setup_seconds if draft.source in self.by_source else 0.0
        self.d.controller.record_round(
            draft.key,
            len(draft.tokens),
            n,
            draft_seconds - draft.setup_seconds,
            verify_seconds,
            recurring,
        )
        self.drafted += len(draft.tokens)
        self.accepted += n
        counts = self.by_source.setdefault(draft.source or self.d.draft.name, [0, 0])
        counts[0] += len(draft.tokens)
        counts[1] += n
        # Count tokens as they are emitted: a stream that ends inside this round (max_tokens,
        # EOS, a stop string) must not report tokens the caller never received.
        self._count(0)
        for i, t in enumerate([*draft.tokens[:n], token]):
            self.committed += 1
            response = self.emit(logits[i], t, i < n)
            yield response
            if response.finish_reason:
                return

    def _verify_tree(self, tree: TokenTree, draft_seconds: float) -> Iterator[GenerationResponse]:
        """One pass over the whole tree; the target's path through it is committed."""
        started = time.perf_counter()
        target, history, trees = self.d.target, self.out.history, self.d.trees
        assert trees is not None
        base = target.position  # the cache holds history[:-1]; the tree's root is history[-1]
        logits = target.verify_tree(tree.tokens, tree.parents)  # [nodes, V]
        kept, token = accept_tree(self.sampler, logits, tree, history)
        path, self.carry = kept, []
        if trees.exact and (m := exact_prefix(kept)) < len(kept):
            # Commit what a chain pass computes bit for bit: the prefix fed first, and the
            # token its last row chose; the rest of the kept path drafts the next pass.
            path, token = kept[:m], tree.tokens[kept[m]]
            self.carry = [*(tree.tokens[node] for node in kept[m + 1 :]), token]
            trees.carried += 1
        target.commit_tree(base, path)
        trees.record_pass(len(tree.tokens), time.perf_counter() - started)
        trees.learn(tree, kept, logits)
        verify_seconds = time.perf_counter() - started
        n = len(path) - 1
        self.d.controller.record_round(TREE_KEY, tree.drafted, n, draft_seconds, verify_seconds)
        self.drafted += tree.drafted
        self.accepted += n
        counts = self.by_source.setdefault(TREE_KEY, [0, 0])
        counts[0] += tree.drafted
        counts[1] += n
        self._count(0)
        tokens = [*(tree.tokens[node] for node in path[1:]), token]
        for i, t in enumerate(tokens):
            self.committed += 1
            response = self.emit(logits[path[i]], t, i < n)
            yield response
            if response.finish_reason:
                return

    def emit(self, logits: np.ndarray, token: int, from_draft: bool) -> GenerationResponse:
        """The response for `token`, chosen from `logits` (V,): its logprob (and the top ones
        when asked) come from the sampler, as in plain decoding, so both report alike."""
        started = time.perf_counter()
        logprob, top = self.sampler.logprobs(logits, token, self.out.config.top_logprobs)
        response = self.out.emit(
            token,
            logprob,
            from_draft=from_draft,
            top_logprobs=top if self.out.config.top_logprobs else None,
        )
        done = time.perf_counter()
        if self._resumed is not None:  # the first token's emitting comes before the clock
            self.emit_seconds += done - started
            self.seconds += done - self._resumed
            self._resumed = done
        return replace(response, speculation=self.stats())

    def _count(self, tokens: int) -> None:
        self.passes += 1
        self.committed += tokens
