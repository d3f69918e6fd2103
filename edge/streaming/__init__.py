"""Disk-streamed weights: run a model in less memory than its weights (see `engine`)."""

from edge.streaming.engine import StreamConfig, StreamedEngine, describe_plan

__all__ = ["StreamConfig", "StreamedEngine", "describe_plan"]
