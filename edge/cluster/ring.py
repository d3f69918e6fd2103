"""A worker's side of a ring reduction of tensor-parallel partials.

The star sends the hidden states x [S, H] to every worker and takes every partial back: the
coordinator's link carries 2 N S H floats a reduction. In a ring the coordinator sends x to
the first worker only; each worker hands x on to the next as soon as it has it (before
computing, so the next computes meanwhile), computes its partial, adds the running sum the
previous worker hands it (the first has none) and hands the sum on; the last one answers the
coordinator with it. No link carries more than 2 S H floats, at the price of N + 1 one-way
trips instead of a round trip (`edge.cluster.predict.reduction_s` weighs them).

The hand-overs are the pipeline's worker-to-worker `forward` messages (`Worker._link`: the
next worker admits this one's key, which may send nothing else), with meta `ring` ("x" or
"sum") and the reduction's `token`. Every worker also has the coordinator's request for the
reduction (meta `ring`: the token, `last`), so each is waited on with its own link's bounded
loss detection, and the coordinator learns which worker a hand-over failed to reach.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.cluster.errors import ProtocolError
from edge.cluster.frames import Message
from edge.errors import ConfigError

PARTS = ("x", "sum")
# Hands `array` to the next worker as part "x" or "sum" of a reduction: True, or why not.
Forward = Callable[[str, np.ndarray], bool | str]


class Ring:
    """The reduction a worker takes part in now: what came from the previous worker (the
    latest x and sum, kept until their request comes or a newer one replaces them) and its
    own partial once computed."""

    def __init__(self) -> None:
        self.arrived: dict[str, Message] = {}
        self.partial: np.ndarray | None = None
        self.turns = 0  # reductions this worker passed on or answered

    def clear(self) -> None:
        self.arrived.clear()
        self.partial = None

    def begin(self, request: Message, upstream: bool, downstream: bool) -> None:
        """Check a coordinator's ring request before it waits for its inputs: a token, x in
        its buffer (the first worker) or from the previous worker, and a next worker unless
        it is the last."""
        token, last = request.meta.get("ring"), request.meta.get("last", False)
        if isinstance(token, bool) or not isinstance(token, int) or not isinstance(last, bool):
            raise ProtocolError("a ring request carries an integer token and a boolean last")
        if len(request.buffers) > 1:
            raise ProtocolError(f"a ring request carries x or nothing, got {len(request.buffers)}")
        if not request.buffers and not upstream:
            raise ConfigError("ring: x comes from the previous worker, but none is linked")
        if not last and not downstream:
            raise ConfigError("ring: not the last worker, but no next worker is linked")
        self.partial = None
        self.arrived = {k: m for k, m in self.arrived.items() if m.meta.get("token") == token}

    def receive(self, message: Message) -> None:
        """A hand-over from the previous worker: kept (one per part) until its turn."""
        part, token = message.meta.get("ring"), message.meta.get("token")
        if part not in PARTS or isinstance(token, bool) or not isinstance(token, int):
            raise ProtocolError('a ring hand-over carries ring "x" or "sum" and a token')
        if len(message.buffers) != 1 or message.buffers[0].dtype != np.float32:
            raise ProtocolError("a ring hand-over carries one float32 buffer")
        self.arrived[str(part)] = message

    def turn(
        self, request: Message, compute: Callable[[np.ndarray], np.ndarray], forward: Forward
    ) -> Message | None:
        """Advance the reduction `request` asked for as far as its inputs allow: its reply
        once done (the sum for the last worker, else whether x and the sum went on), None
        while an input from the previous worker is still to come."""
        token, last = int(request.meta["ring"]), bool(request.meta.get("last", False))
        first = bool(request.buffers)
        if self.partial is None:
            x = request.buffers[0] if first else self._take("x", token)
            if x is None:
                return None
            if not last and (why := forward("x", x)) is not True:
                return _passed(request, why)
            self.partial = compute(x)
        total = self.partial
        if not first:
            previous = self._take("sum", token)
            if previous is None:
                return None
            if previous.shape != total.shape:
                raise ProtocolError(
                    f"a sum of shape {list(previous.shape)} from the previous worker"
                )
            total = previous + total
        self.partial = None
        self.turns += 1
        if last:
            return Message("shard", request.id, {}, (total,))
        return _passed(request, forward("sum", total))

    def _take(self, part: str, token: int) -> np.ndarray | None:
        message = self.arrived.get(part)
        if message is None or message.meta.get("token") != token:
            return None
        del self.arrived[part]
        return message.buffers[0]


def _passed(request: Message, why: bool | str) -> Message:
    """A worker's reply before the last: whether its hand-overs went on, and why not."""
    meta: dict[str, object] = {"forwarded": why is True}
    if why is not True:
        meta["why"] = str(why)
    return Message("shard", request.id, meta)
