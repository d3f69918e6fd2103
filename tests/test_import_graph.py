"""The import graph between edge's packages: no cycles, and the lower layers see only edge's leaves.

devices/, memory_sched/, quant/ and exporters/ sit below the SDK (edge.model, edge.engine, ...):
at module level they may import only the leaf modules of `edge` (the format, errors, rope,
KV layout, package files, stamps, paths), and devices/ and memory_sched/ never import each other.
A leaf that pulled in the SDK, or a cycle through a package `__init__`, makes the import order of
a program decide whether it starts at all, and makes a device load the engine it does not use.

The graph is read from the sources with `ast` (nothing is imported). An import counts when it
runs at import time: anywhere but inside a function body or an `if TYPE_CHECKING:` block.
Importing `a.b.c` also runs the packages `a` and `a.b` (except those the importer itself sits
in, which are already being imported), so those are edges too: that is how `import
edge.format` used to load the whole SDK through `edge/__init__`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "devices", "memory_sched", "quant", "exporters")
LOWER = ("devices", "memory_sched", "quant", "exporters")  # below the SDK

# What the lower layers may import from edge: modules with no SDK import, directly or not
# (`edge` itself is one: its __init__ imports the SDK lazily, PEP 562).
LEAVES = frozenset(
    {
        "edge",
        "edge.architectures",
        "edge.chat_template",
        "edge.errors",
        "edge.format",
        "edge.graph_trust",
        "edge.hashing",
        "edge.heap",
        "edge.kv_cache",
        "edge.manifest_checks",
        "edge.onnx_wire",
        "edge.package",
        "edge.package_files",
        "edge.paths",
        "edge.prepacked",
        "edge.quant_record",
        "edge.rope",
        "edge.stamps",
        "edge.tokenizer",
        "edge.validate",
    }
)

# Known exceptions, (importer, edge module), to remove as they are fixed; none may pull the SDK
# in (test_known_exceptions_stay_out_of_the_sdk).
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

# The SDK entry points none of the above may reach (prefixes: their subpackages too).
SDK = (
    "edge.model",
    "edge.engine",
    "edge.generate",
    "edge.speculative",
    "edge.planner",
    "edge.cli",
    "edge.streaming",
    "edge.backends",
    "edge.bench",
    "edge.evaluate",
)


def _is_sdk(module: str) -> bool:
    return any(module == s or module.startswith(s + ".") for s in SDK)


def _modules() -> dict[str, Path]:
    """Dotted name -> source file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (class bodies, `try`, `if` and
    `with` blocks included; function bodies and `if TYPE_CHECKING:` blocks not)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from _module_level_imports(node.orelse)
        else:
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list):
                    yield from _module_level_imports(block)
            for handler in getattr(node, "handlers", None) or []:
                yield from _module_level_imports(handler.body)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def _lazy_names(package: str) -> dict[str, str]:
    """A package's PEP 562 names (`_LAZY = {name: module}` in its __init__): `from edge import
    load` at module level imports edge.model, however lazily edge provides it."""
    path = MODULES.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, (ast.Assign, ast.AnnAssign))
            and isinstance(node.value, ast.Dict)
            and any(
                isinstance(t, ast.Name) and t.id == "_LAZY"
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            )
        ):
            return ast.literal_eval(node.value)
    return {}


@cache
def _imports(module: str) -> dict[str, int]:
    """Project modules that importing `module` runs -> the line that does it."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    own = {module, *_ancestors(module)}  # already in sys.modules when `module` runs
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target not in MODULES or target == module:
            return
        found.setdefault(target, line)
        for parent in _ancestors(target):
            if parent not in own:
                found.setdefault(parent, line)

    for node in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        if source.split(".")[0] not in PACKAGES:
            continue
        names = [alias.name for alias in node.names]
        # `from pkg import submodule` needs pkg's body only when pkg is not our own ancestor
        if source not in own or any(f"{source}.{n}" not in MODULES for n in names):
            add(source, node.lineno)
        for name in names:
            add(f"{source}.{name}", node.lineno)
            if name in _lazy_names(source):
                add(_lazy_names(source)[name], node.lineno)
    return found


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in _imports(todo.pop()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _cycles() -> list[list[str]]:
    """One cycle through each strongly connected component (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(MODULES):
        if root in index:
            continue
        work = [(root, iter(sorted(_imports(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(_imports(target)))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return [_cycle_in(component) for component in components]


def _cycle_in(component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth first)."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(_imports(node)):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in component and target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"no cycle in {sorted(component)}")


def _describe(cycle: list[str]) -> str:
    steps = [f"{a} (line {_imports(a)[b]})" for a, b in pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def test_module_walk_sees_the_packages() -> None:
    """The walk finds the modules and the imports the rest of this file relies on."""
    assert {
        "edge",
        "edge.format",
        "devices.backend",
        "memory_sched.budget",
        "quant.blockwise",
        "exporters.export",
    } <= set(MODULES)
    assert "edge.errors" in _imports("edge.format")
    assert "edge.rope" in _imports("devices.spec_forward.numpy_forward")
    # importing a submodule runs its packages: devices.backend -> edge.format -> edge
    assert "edge" in _imports("devices.backend")


def test_no_import_cycles() -> None:
    """No cycle of module-level imports between project modules: each imports first."""
    cycles = [_describe(cycle) for cycle in _cycles()]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_lower_layers_import_only_edge_leaves() -> None:
    """devices/, memory_sched/, quant/, exporters/ import only edge's leaves at module level;
    devices/ and memory_sched/ do not import each other."""
    violations = []
    for module in sorted(MODULES):
        layer = module.split(".")[0]
        if layer not in LOWER:
            continue
        for target, line in sorted(_imports(module).items()):
            other = target.split(".")[0]
            if (
                other == "edge"
                and target not in LEAVES
                and (module, target) not in (KNOWN_EXCEPTIONS)
            ):
                violations.append(f"{module} (line {line}) imports {target}: not an edge leaf")
            if {layer, other} == {"devices", "memory_sched"}:
                violations.append(
                    f"{module} (line {line}) imports {target}: devices/ and "
                    "memory_sched/ never import each other"
                )
    assert not violations, "\n".join(violations)


def test_edge_leaves_are_leaves() -> None:
    """What a leaf imports, directly or not, is only other leaves of edge (and no SDK)."""
    bad = {
        leaf: sorted(m for m in _closure(leaf) if m.startswith("edge") and m not in LEAVES)
        for leaf in sorted(LEAVES)
    }
    bad = {leaf: found for leaf, found in bad.items() if found}
    assert not bad, f"edge leaves importing non-leaf modules: {bad}"


def test_known_exceptions_stay_out_of_the_sdk() -> None:
    """The listed exceptions still exist (drop an entry once its import is gone) and none of
    them loads the SDK."""
    stale = sorted(pair for pair in KNOWN_EXCEPTIONS if pair[1] not in _imports(pair[0]))
    assert not stale, f"remove these from KNOWN_EXCEPTIONS, the import is gone: {stale}"
    sdk = {
        target: sorted(m for m in _closure(target) if _is_sdk(m))
        for _, target in sorted(KNOWN_EXCEPTIONS)
    }
    sdk = {target: found for target, found in sdk.items() if found}
    assert not sdk, f"allowed edge modules reaching the SDK: {sdk}"


# One fresh interpreter each: a module that a test run imported earlier hides what it loads.
LOADS_NO_SDK = [
    "edge",
    "edge.format",
    "edge.rope",
    "edge.kv_cache",
    "devices",
    "devices.backend",
    "devices.spec_forward",
    "memory_sched",
    "memory_sched.prefetcher",
    "quant",
]
CHECK = """
import sys
import {module}
sdk = sorted(m for m in sys.modules if m.startswith("edge.") and m not in {leaves!r}
             and any(m == s or m.startswith(s + ".") for s in {sdk!r}))
assert not sdk, "import {module} loaded " + ", ".join(sdk)
import edge
assert callable(edge.load) and "edge.model" in sys.modules
"""


@pytest.mark.parametrize("module", LOADS_NO_SDK)
def test_lower_layer_import_loads_no_sdk(module: str) -> None:
    """`python -c "import <module>"` loads no SDK module, and `edge.load` still resolves."""
    code = CHECK.format(module=module, leaves=sorted(LEAVES), sdk=SDK)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "module",
    [
        "edge.streaming",
        "edge.streaming.backend",
        "edge.backends",
        "edge.engine",
        "edge.planner",
        "edge.speculative",
        "edge.model",
    ],
)
def test_sdk_modules_import_first(module: str) -> None:
    """Each SDK module imports first in a fresh interpreter, then `from edge import load`."""
    code = f"import {module}\nfrom edge import load\nassert callable(load)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
