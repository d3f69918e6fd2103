"""Disk-streamed weights: weight store, sliding-window policy, prefetcher (the streaming issue)."""
