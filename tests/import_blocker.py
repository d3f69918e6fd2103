"""The start of a child interpreter's script on "a device without torch": importing torch,
transformers or onnx fails there (onnxruntime stays importable: names match exactly), as where
they are not installed. `attempts` records what tried; the blocker checks itself first."""

BLOCK_EXPORT_STACK = r"""
import importlib.abc
import json
import sys

BLOCKED = ("torch", "transformers", "onnx")
attempts = []


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{name} is not installed on this device (blocked by the test)")
        return None


sys.meta_path.insert(0, Block())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker failed: {name} imported")
attempts.clear()
"""
