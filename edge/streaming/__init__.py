"""Disk-streamed weights: run a model in less memory than its weights (see `backend`)."""

from edge.streaming.config import StreamConfig, streamed_state

__all__ = ["StreamConfig", "streamed_state"]
