"""Prometheus metrics of one server, in a registry of its own (two servers in one process, as
in tests, must not share counters): requests, queue depth, token rates, prefill and decode
time, speculative acceptance."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from edge.generate import GenerationResponse
    from edge.server.worker import Finished

CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "edge_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.queue_depth = Gauge("edge_queue_depth", "requests waiting for the engine", registry=r)
        self.running = Gauge("edge_requests_running", "requests generating (0 or 1)", registry=r)
        self.model_loaded = Gauge(
            "edge_model_loaded", "1 once a model is loaded", ["model"], registry=r
        )
        self.prompt_tokens = Counter("edge_prompt_tokens", "prompt tokens", registry=r)
        self.cached_tokens = Counter(
            "edge_prompt_tokens_cached", "prompt tokens reused from the KV cache", registry=r
        )
        self.generated_tokens = Counter("edge_generated_tokens", "tokens generated", registry=r)
        self.prefill = Histogram(
            "edge_time_to_first_token_seconds",
            "prefill and the first token, per request",
            buckets=SECONDS,
            registry=r,
        )
        self.decode = Histogram(
            "edge_decode_seconds", "first to last token, per request", buckets=SECONDS, registry=r
        )
        self.prompt_tps = Gauge(
            "edge_prompt_tokens_per_second", "prefill rate of the last request", registry=r
        )
        self.decode_tps = Gauge(
            "edge_decode_tokens_per_second", "decode rate of the last request", registry=r
        )
        self.drafted = Counter(
            "edge_speculation_drafted_tokens", "draft tokens proposed", registry=r
        )
        self.accepted = Counter(
            "edge_speculation_accepted_tokens", "draft tokens accepted", registry=r
        )
        self.acceptance = Gauge(
            "edge_speculation_acceptance", "accepted/drafted of the last request", registry=r
        )

    def record(self, done: Finished, last: GenerationResponse) -> None:
        """Account one finished generation."""
        self.prompt_tokens.inc(done.prompt_tokens)
        self.cached_tokens.inc(done.cached_tokens)
        self.generated_tokens.inc(done.completion_tokens)
        self.prefill.observe(done.first_token_s)
        self.decode.observe(done.decode_s)
        self.prompt_tps.set(last.prompt_tps)
        if done.completion_tokens > 1 and done.decode_s > 0:
            self.decode_tps.set((done.completion_tokens - 1) / done.decode_s)
        spec = last.speculation
        if spec is not None:
            self.drafted.inc(spec.drafted)
            self.accepted.inc(spec.accepted)
            self.acceptance.set(spec.acceptance)

    def render(self) -> bytes:
        return generate_latest(self.registry)
