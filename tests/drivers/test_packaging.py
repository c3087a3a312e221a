"""Every third-party package the code imports at module level is a declared dependency.

Issue 16: calibration imported scipy at module level while pyproject.toml did not declare it
(and the README said it was not needed at run time), so a clean install broke on import.
"""

from __future__ import annotations

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("onnlab", "drivers", "calibration")


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported outside functions (what `import module` itself needs)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)) and not _type_checking(node):
            nodes += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
    return names


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for req in project["dependencies"]:
        name = req.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("_", "-"))
    return names


def test_module_level_third_party_imports_are_declared() -> None:
    ours = set(PACKAGES)
    dists = packages_distributions()
    declared = _declared()
    missing: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for name in _module_level_imports(path):
                if name in ours or name in sys.stdlib_module_names or name == "__future__":
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
                if not owners & declared:
                    missing.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported at module level but not declared in pyproject: {missing}"


def test_loading_a_bench_config_imports_no_torch() -> None:
    """Validating a real bench's YAML (or probing its serial stage) needs no optics model."""
    import subprocess

    code = (
        "import sys; from drivers.registry import load_bench_config; "
        f"load_bench_config({str(REPO / 'configs' / 'bench' / 'lab-example.yaml')!r}); "
        "from drivers.sim import protocol_sim; protocol_sim.register(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
