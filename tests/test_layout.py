"""The package layout shows the architecture: one subpackage per part, imports only downwards.

Every import in every module (top-level and inside functions) is read with ``ast``; the parts are
the subpackages and the top-level modules. The order below is the architecture: a part may import
only parts to its left. That rules out cycles and upward arrows (nn, data and models never reach
training, uncertainty, pruning, Ke & Fan, scaling or the CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "bayescale"
ORDER = ["nn", "data", "models", "uncertainty", "kefan", "ivon", "train", "pruning", "scale",
         "evaluate", "quickstart", "cli", "__main__", "__init__"]
FOUNDATIONS = {"nn", "data", "models"}
HIGHER = {"train", "uncertainty", "pruning", "kefan", "ivon", "scale", "cli", "evaluate",
          "quickstart"}


def _module_name(path: Path, pkg: Path = PKG) -> list[str]:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, pkg: Path = PKG) -> set[str]:
    """Dotted ``bayescale.*`` modules imported anywhere in ``path`` (relative ones resolved)."""
    here = _module_name(path, pkg)
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "bayescale"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "bayescale":
                continue
            out.add(target)
            if node.module is None or target == "bayescale":  # `from . import x`: x may be a module
                out |= {f"{target}.{a.name}" for a in node.names}
    return out


def _part(dotted: str) -> str | None:
    """The part a ``bayescale.*`` name belongs to (None for the bare package)."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return None
    head = parts[1]
    return head if (PKG / head).is_dir() or (PKG / f"{head}.py").is_file() else None


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        name = _module_name(path)
        src = name[1] if len(name) > 1 else "__init__"
        deps = {_part(t) for t in _imports(path)} - {None, src}
        edges.setdefault(src, set()).update(deps)  # type: ignore[arg-type]
    return edges


def test_at_most_six_top_level_modules_and_one_subpackage_per_part():
    modules = sorted(p.name for p in PKG.glob("*.py"))
    assert len(modules) <= 6, modules
    assert modules == ["__init__.py", "__main__.py", "cli.py", "evaluate.py", "quickstart.py"]
    packages = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(["nn", "data", "models", "uncertainty", "kefan", "ivon", "train",
                               "pruning", "scale"])


def test_the_import_reader_sees_relative_lazy_and_absolute_imports(tmp_path):
    probe = tmp_path / "bayescale" / "train" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from ..nn.layers import BayesLinear\nfrom . import config\nimport os\n"
                     "def f():\n    from bayescale.pruning import bprune\n"
                     "    import bayescale.cli\n")
    assert _imports(probe, tmp_path / "bayescale") == {
        "bayescale.nn.layers", "bayescale.train", "bayescale.train.config", "bayescale.pruning",
        "bayescale.cli"}


def test_imports_point_only_downwards():
    edges = _graph()
    assert set(edges) <= set(ORDER), set(edges) - set(ORDER)
    rank = {p: i for i, p in enumerate(ORDER)}
    upward = {(a, b) for a, deps in edges.items() for b in deps if rank[b] >= rank[a]}
    assert not upward, f"imports against the layer order {ORDER}: {sorted(upward)}"


def test_no_import_cycle_between_parts():
    edges = _graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("part", sorted(FOUNDATIONS))
def test_foundations_never_import_higher_parts(part):
    assert not _graph()[part] & HIGHER, _graph()[part] & HIGHER


def test_tests_mirror_the_subpackages():
    tests = Path(__file__).resolve().parent
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    for part in packages:
        assert list((tests / part).glob("test_*.py")), f"no tests/{part}/test_*.py"
    stray = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert stray <= packages, stray - packages
