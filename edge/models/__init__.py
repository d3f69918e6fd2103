"""Registered real models and pulling them into edge's cache.

`pull` is deliberately not re-exported: binding the function here would shadow the
`edge.models.pull` submodule, breaking `monkeypatch.setattr("edge.models.pull.…")` and
`import edge.models.pull as m`. Use `from edge.models.pull import pull`.
"""

from edge.models.registry import DEFAULT_MODEL, REGISTRY, ModelSource, WheelPart, get_source

__all__ = ["DEFAULT_MODEL", "REGISTRY", "ModelSource", "WheelPart", "get_source"]
