"""The import graph of onnlab/, drivers/ and calibration/: no cycles, and DESIGN.md's layers.

Read from the source with ``ast`` (nothing is imported), so the check is cheap and sees every
import: module level and inside functions alike.  A function-level import is still a
dependency; hiding a cycle inside a function only postpones it to run time.  Imports under
``if TYPE_CHECKING:`` never run and are skipped.

Runtime semantics are modelled: importing ``a.b.c`` from another package first runs ``a/__init__``
and ``a/b/__init__``, so those package modules are dependencies too (but not a module's own
ancestors, which are already initialising when it runs).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("onnlab", "drivers", "calibration")

# DESIGN.md "Layers": the layer of each package (longest prefix wins).  ``onnlab`` itself,
# ``onnlab.errors``, ``onnlab.runtime`` and ``onnlab.config_errors`` are shared leaves (0).
LAYERS = {
    "onnlab": 0,
    "onnlab.errors": 0,
    "onnlab.runtime": 0,
    "onnlab.config_errors": 0,
    "onnlab.optics": 1,
    "onnlab.models": 2,
    "onnlab.data": 2,
    "onnlab.distill": 2,
    "onnlab.training": 2,
    "onnlab.estimate": 2,
    "onnlab.design": 2,
    "drivers": 3,
    "calibration": 4,
    "onnlab.capture": 5,
    "onnlab.finetune": 5,
    "onnlab.commands": 5,
    "onnlab.cli": 5,
    "onnlab.bench": 5,
    "onnlab.__main__": 5,
    "onnlab.sweep": 5,  # tuning / seed sweeps over training runs (DESIGN.md "Scale")
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(name: str, path: Path) -> set[str]:
    """Dotted names a module imports (absolute, ``from x import y`` gives x and x.y)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def _graph() -> dict[str, set[str]]:
    """module -> modules of the three packages whose code runs when it imports them."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps: set[str] = set()
        for target in _imported_names(name, path):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and prefix not in own_ancestors:
                    deps.add(prefix)
        graph[name] = deps
    return graph


def _layer(name: str) -> int | None:
    """Layer of a module: its longest listed prefix (``onnlab`` itself matches only itself)."""
    best = None
    for prefix, layer in LAYERS.items():
        covers = name == prefix or (prefix != "onnlab" and name.startswith(prefix + "."))
        if covers and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return components


def test_the_scan_finds_the_packages_and_their_imports():
    """Guards the checks below against passing vacuously (a wrong root, a broken parser)."""
    graph = _graph()
    assert {"onnlab.optics.psf", "drivers.protocols", "calibration.twin"} <= set(graph)
    assert "onnlab.distill.task_losses" in graph["onnlab.training.losses"]
    assert "onnlab.optics.convolution" in graph["onnlab.models.frontend"]


def test_cycle_detector_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer():
    """A new package must be placed in DESIGN.md's layers before the rules can check it."""
    assert not [m for m in _graph() if _layer(m) is None]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def _violations(rule) -> list[str]:
    return sorted(
        f"{src} -> {dst}" for src, deps in _graph().items() for dst in deps if rule(src, dst)
    )


def test_imports_only_point_downward():
    """A module never imports a higher layer (DESIGN.md), shared leaves (layer 0) import none."""

    def upward(src: str, dst: str) -> bool:
        a, b = _layer(src), _layer(dst)
        return a is not None and b is not None and b > a

    assert not _violations(upward)


# Today's breaches of DESIGN.md's rules, listed so that they stay visible rather than exempt:
# a new breach fails, and so does a listed one that has been fixed (remove it here).
# - calibration.artifact imports drivers.registry (to hash a bench config file), and the
#   registry imports drivers.sim.faults, so calibration also reaches drivers.sim transitively.
KNOWN_BREACHES = {
    "calibration uses drivers through protocols only": [
        "calibration.artifact -> drivers.registry",
    ],
}
# drivers.sync (display/exposure synchronisation) works on any Camera through the protocol.
CALIBRATION_MAY_USE = (
    "drivers",
    "drivers.protocols",
    "drivers.errors",
    "drivers.base",
    "drivers.sync",
)
# The registry is the factory that opens simulated or real devices by id; it is not a driver.
REAL_DRIVERS_EXCLUDE = ("drivers", "drivers.registry")

RULES = {
    "layers 1-2 never import drivers or calibration": lambda s, d: (
        _layer(s) in (1, 2) and d.split(".")[0] in ("drivers", "calibration")
    ),
    "layer 1 (physics) imports nothing of onnlab above it": lambda s, d: (
        _layer(s) == 1 and _layer(d) not in (0, 1)
    ),
    "calibration never imports drivers.sim (no inverse crime)": lambda s, d: (
        s.startswith("calibration") and d.startswith("drivers.sim")
    ),
    "calibration uses drivers through protocols only": lambda s, d: (
        s.startswith("calibration") and d.startswith("drivers") and d not in CALIBRATION_MAY_USE
    ),
    "real drivers never import drivers.sim": lambda s, d: (
        s.startswith("drivers")
        and not s.startswith("drivers.sim")
        and s not in REAL_DRIVERS_EXCLUDE
        and d.startswith("drivers.sim")
    ),
    "drivers use only layer 1 of onnlab": lambda s, d: (
        s.startswith("drivers") and d.startswith("onnlab") and _layer(d) not in (0, 1)
    ),
}


@pytest.mark.parametrize("what", sorted(RULES))
def test_design_rules(what):
    assert _violations(RULES[what]) == sorted(KNOWN_BREACHES.get(what, [])), what
