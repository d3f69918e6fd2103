"""DraftController: picks the draft length with the best predicted tokens per second from
measured acceptance and costs, and switches speculation off when plain decoding is faster,
probing again every `probe_every` plain tokens. Pure arithmetic: no model, no clock."""

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
    controller.record_plain(PLAIN)
    assert controller.next_k() >= 1  # the priors (acceptance 0.6) favour speculating
    assert controller.active


def test_high_acceptance_and_cheap_rounds_draft_several_tokens() -> None:
    """All 4 of 4 tokens accepted, rounds costing 1.2 plain steps: k > 1 and active."""
    controller = _controller()
    for _ in range(10):
        controller.record_round(4, 4, 4, draft_seconds=0.0004, round_seconds=1.2 * PLAIN)
    assert controller.acceptance > 0.95
    k = controller.next_k()
    assert k > 1
    assert controller.active
    assert controller.expected_tokens(k) / controller.round_cost(k) > 1 / PLAIN


def _make_expensive(controller: DraftController) -> None:
    """Nothing accepted, and every round costs five plain steps."""
    for k in range(1, controller.config.max_draft + 1):
        controller.record_round(k, k, 0, draft_seconds=k * PLAIN, round_seconds=5 * PLAIN)


def test_switches_off_when_rounds_cost_more_than_they_give() -> None:
    """When no k beats plain decoding: next_k() == 0 and active is False."""
    controller = _controller()
    _make_expensive(controller)
    assert controller.next_k() == 0
    assert controller.active is False
    assert controller.best()[1] < 1 / PLAIN


@pytest.mark.parametrize("probe_every", [1, 4, 16])
def test_probes_again_after_probe_every_plain_tokens(probe_every: int) -> None:
    """While off, `probe_every` plain steps (k = 0) precede the first probe of k = 1, and each
    probe that still loses doubles the gap (a text where drafts never pay costs ever less)."""
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
    assert controller.active
    for _ in range(40):
        controller.record_round(1, 1, 1, draft_seconds=0.0001, round_seconds=1.05 * PLAIN)
    for k in range(2, controller.config.max_draft + 1):
        controller.record_round(k, k, k, draft_seconds=0.0001 * k,
                                round_seconds=(1 + 0.05 * k) * PLAIN)
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
    controller._accepted, controller._trials = 0.5 * 1e6, 1e6  # a ~ 0.5, the prior negligible
    assert controller.expected_tokens(1) == pytest.approx(1.5, rel=1e-4)
    assert controller.expected_tokens(3) == pytest.approx(1.875, rel=1e-4)
