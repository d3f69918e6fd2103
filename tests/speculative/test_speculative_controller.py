"""DraftController: picks the draft length with the best predicted tokens per second from
measured acceptance (per kind of draft) and costs (draft time per token, a verification slope
fitted from measured passes), and switches a kind off when plain decoding is faster, probing
it again after `probe_every` declined drafts. Pure arithmetic: no model, no clock."""

from __future__ import annotations

import pytest

from edge.speculative import SpeculativeConfig
from edge.speculative.controller import DraftController

PLAIN = 0.010  # seconds per plain decode step


def _controller(**kwargs: object) -> DraftController:
    controller = DraftController(SpeculativeConfig(**kwargs))
    controller.record_plain(PLAIN)
    return controller


def test_plain_step_is_measured_first() -> None:
    """Before one plain step is measured there is nothing to compare against: k = 0."""
    controller = DraftController(SpeculativeConfig())
    assert controller.next_k() == 0
    assert controller.active is False
    controller.record_plain(PLAIN)
    assert controller.next_k() >= 1  # the priors (acceptance 0.6) favour speculating
    assert controller.active


def test_high_acceptance_and_cheap_rounds_draft_several_tokens() -> None:
    """All 4 of 4 tokens accepted, passes of 5 tokens costing 1.2 plain steps: k > 1."""
    controller = _controller()
    for _ in range(10):
        controller.record_round("", 4, 4, draft_seconds=0.0004, verify_seconds=1.2 * PLAIN)
    assert controller.acceptance() > 0.95
    assert controller.verify_slope.value == pytest.approx(0.05)
    k = controller.next_k()
    assert k > 1
    assert controller.active
    assert controller.expected_tokens(k) / controller.round_cost(k) > 1 / PLAIN


def _make_expensive(controller: DraftController, key: str = "") -> None:
    """Nothing accepted, drafting costs a plain step per token, and verifying 5 of them."""
    for k in range(1, controller.config.max_draft + 1):
        controller.record_round(key, k, 0, draft_seconds=k * PLAIN, verify_seconds=5 * PLAIN)


def test_switches_off_when_rounds_cost_more_than_they_give() -> None:
    """When no k beats plain decoding: next_k() == 0 and active is False."""
    controller = _controller()
    _make_expensive(controller)
    assert controller.next_k() == 0
    assert controller.active is False
    assert controller.best()[1] < 1 / PLAIN


def test_kinds_are_judged_apart() -> None:
    """A kind that is always rejected is switched off while a kind that is always accepted
    keeps drafting long: lookup drafts matched on 4 tokens against those matched on 1."""
    controller = _controller()
    for _ in range(20):
        controller.record_round("ngram1", 3, 0, draft_seconds=0.0, verify_seconds=1.4 * PLAIN)
        controller.record_round("ngram4", 3, 3, draft_seconds=0.0, verify_seconds=1.4 * PLAIN)
    assert controller.next_k("ngram1") == 0
    assert controller.next_k("ngram4") == controller.config.max_draft
    assert controller.acceptance("ngram1") < 0.1 < 0.9 < controller.acceptance("ngram4")


def test_draft_cost_is_kept_per_kind() -> None:
    """A free kind (lookup) and a costly one (a model) at equal acceptance: the costly one
    drafts fewer tokens, since each costs it time."""
    controller = _controller()
    for _ in range(20):
        controller.record_round("free", 4, 3, draft_seconds=0.0, verify_seconds=1.6 * PLAIN)
        controller.record_round(
            "model", 4, 3, draft_seconds=4 * 0.5 * PLAIN, verify_seconds=1.6 * PLAIN
        )
    assert controller.round_cost(4, "model") > controller.round_cost(4, "free")
    assert controller.next_k("model") < controller.next_k("free")


@pytest.mark.parametrize("probe_every", [1, 4, 16])
def test_probes_again_after_probe_every_plain_tokens(probe_every: int) -> None:
    """While off, `probe_every` declined drafts (k = 0) precede the first probe of k = 1, and
    each probe that still loses doubles the gap (a text where drafts never pay costs ever
    less)."""
    controller = _controller(probe_every=probe_every)
    _make_expensive(controller)
    gaps = (probe_every, 2 * probe_every, 4 * probe_every)
    ks = [controller.next_k() for _ in range(sum(gaps) + 3)]
    assert ks == [k for gap in gaps for k in [0] * gap + [1]]


def test_turns_back_on_when_probes_succeed() -> None:
    """Probes that are accepted and cheap bring speculation back (k >= 1, active)."""
    controller = _controller(probe_every=2)
    _make_expensive(controller)
    assert controller.next_k() == 0
    controller.start_request()  # a new request: acceptance back to its prior
    for _ in range(40):
        controller.record_round("", 1, 1, draft_seconds=0.0001, verify_seconds=1.05 * PLAIN)
    assert controller.next_k() >= 1
    assert controller.active


def test_self_disable_off_keeps_drafting() -> None:
    """self_disable=False: even when speculation loses, the best k (>= 1) is used."""
    controller = _controller(self_disable=False)
    _make_expensive(controller)
    assert controller.next_k() >= 1
    assert controller.active


def test_fixed_k_when_not_adaptive() -> None:
    """adaptive=False: always draft_tokens, whatever is measured."""
    controller = _controller(adaptive=False, draft_tokens=5)
    _make_expensive(controller)
    assert [controller.next_k() for _ in range(5)] == [5] * 5


def test_expected_tokens_per_round() -> None:
    """E(k) = (1 - a^(k+1)) / (1 - a): with a = 0.5, k = 1 commits 1.5 tokens on average."""
    controller = _controller()
    kind = controller._kind("")
    kind.accepted, kind.trials = 0.5 * 1e6, 1e6  # a ~ 0.5, the prior negligible
    assert controller.expected_tokens(1) == pytest.approx(1.5, rel=1e-4)
    assert controller.expected_tokens(3) == pytest.approx(1.875, rel=1e-4)


def test_acceptance_carries_into_the_next_request_lightly() -> None:
    """A kind's acceptance from earlier requests is the next request's starting point, but
    with the weight of a few trials: a handful of rejections in the new text outweigh it."""
    controller = _controller()
    for _ in range(40):
        controller.record_round("ngram3", 4, 4, draft_seconds=0.0, verify_seconds=1.5 * PLAIN)
    controller.start_request()
    assert controller.acceptance("ngram3") > 0.8
    for _ in range(10):
        controller.record_round("ngram3", 4, 0, draft_seconds=0.0, verify_seconds=1.5 * PLAIN)
    assert controller.acceptance("ngram3") < 0.5


def test_measured_rounds_overrule_the_prediction() -> None:
    """A kind predicted to win (all accepted, cheap drafts) whose rounds measured slower than
    plain decoding (because of catch-up, which the prediction leaves out) is switched off
    after MEASURED_ROUNDS rounds; its probes then draft the best k, to measure it again. A
    kind without catch-up is judged by its measured rounds too (a draft slower than its
    per-token average, a pass slower than the fitted slope): slow rounds that lose are
    switched off, slow rounds that still win go on."""
    controller = _controller(probe_every=2)
    for _ in range(DraftController.MEASURED_ROUNDS):
        controller.record_round(
            "model",
            4,
            4,
            draft_seconds=4 * 0.1 * PLAIN,
            verify_seconds=1.6 * PLAIN,
            catch_up_seconds=6 * PLAIN,
        )
    assert controller.best("model")[1] > 1 / PLAIN  # the prediction alone would draft
    ks = [controller.next_k("model") for _ in range(3)]
    assert ks[:2] == [0, 0] and ks[2] == controller.best("model")[0] > 1
    for _ in range(DraftController.MEASURED_ROUNDS):  # 5 tokens in 6 steps: a loss
        controller.record_round("ngram4", 4, 4, draft_seconds=0.0, verify_seconds=6 * PLAIN)
        controller.record_round("ngram3", 4, 4, draft_seconds=0.0, verify_seconds=3 * PLAIN)
    controller.verify_slope.value = 0.2  # as measured elsewhere: the prediction says win
    assert controller.best("ngram4")[1] > 1 / PLAIN
    assert controller.next_k("ngram4") == 0
    assert controller.next_k("ngram3") > 1  # 5 tokens in 3 steps: slow, but a win


def test_plain_steps_are_measured_by_this_process_and_again() -> None:
    """A plain step remembered from another process (other load) is only a start: the
    decoder is asked for a plain step until this process measured one, which replaces the
    remembered value, and again every `remeasure_every` drafted rounds."""
    controller = DraftController(SpeculativeConfig(remeasure_every=3))
    controller.plain_step.value = 5 * PLAIN  # restored, e.g. measured while a build ran
    assert controller.plain_due()
    controller.record_plain(PLAIN)
    assert controller.plain_step.value == PLAIN and not controller.plain_due()
    for due in (False, False, True):
        controller.record_round("ngram2", 2, 1, draft_seconds=0.0, verify_seconds=1.2 * PLAIN)
        assert controller.plain_due() is due
    controller.record_plain(2 * PLAIN)  # later steps blend in
    assert PLAIN < controller.plain_step.value < 2 * PLAIN
    assert not controller.plain_due()


def test_catch_up_must_pay_back_over_the_remaining_tokens() -> None:
    """A draft model that is behind (the prompt, or text decoded while it was off) is engaged
    only if its predicted gain over the request's remaining tokens covers the catch-up."""
    controller = _controller()
    for _ in range(10):
        controller.record_round(
            "model", 3, 3, draft_seconds=3 * 0.3 * PLAIN, verify_seconds=1.5 * PLAIN
        )
    controller.record_catch_up(100, 100 * 0.2 * PLAIN)  # 20 plain steps to catch up on 100
    assert controller.next_k("model") > 0
    assert controller.next_k("model", catch_up=100, remaining=10) == 0
    assert controller.next_k("model", catch_up=100, remaining=1000) > 0


def test_a_behind_draft_is_probed_once_per_request_at_its_best_acceptance() -> None:
    """Acceptance varies with the text: after a request where the model drafted well (code)
    and one where it did not (prose), the blend alone would not pay for catching up on a new
    prompt, and the model would stay off the whole request without being measured. It is
    probed once, at the best acceptance a whole request saw; declined again after that."""
    controller = _controller()
    controller.record_catch_up(100, 100 * 0.2 * PLAIN)  # 20 plain steps to catch up on 100
    for _ in range(10):  # a request of code: all accepted
        controller.record_round(
            "model", 4, 4, draft_seconds=4 * 0.4 * PLAIN, verify_seconds=1.1 * PLAIN
        )
    controller.start_request()
    for _ in range(30):  # a request of prose: a third accepted
        controller.record_round(
            "model", 3, 1, draft_seconds=3 * 0.4 * PLAIN, verify_seconds=1.1 * PLAIN
        )
    controller.start_request()
    assert not controller._pays_back("model", 100, 100)  # the blend alone: never engaged
    assert controller.next_k("model", catch_up=100, remaining=100) > 1  # the probe
    assert controller.next_k("model", catch_up=100, remaining=100) == 0
    snapshot = controller.snapshot()
    assert snapshot.best_seen["model"] == pytest.approx(1.0)
    restored = DraftController(controller.config)
    restored.restore(snapshot)
    assert restored.next_k("model", catch_up=100, remaining=100) > 1
