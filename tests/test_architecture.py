"""The layering of hf_ext, checked from the source: which package may import which (CONTRIBUTING.md, "arrows").

Every module of ``hf_ext`` and ``dataset_builders`` is parsed with :mod:`ast`; every ``import`` / ``from ... import``
(at module level and inside functions; relative imports resolved; ``from pkg import name`` resolved to the module
``pkg.name`` when that is a module; ``importlib.import_module("literal")`` counted too) becomes an :class:`Edge`.
Imports under ``if TYPE_CHECKING:`` never run, so they are left out. On these edges:

* :func:`find_cycle` — the module-level import graph between hf_ext's subpackages (``hf_ext.models``,
  ``hf_ext.hub``, ..., ``hf_ext.cli``) and between its modules has no cycle;
* :func:`arrow_violations` — the forbidden arrows of :data:`RULES` are absent.

Both return readable messages (the cycle, or ``file:line imports target (rule)``), so this file is also a tool:
``python tests/test_architecture.py`` prints the subpackage graph and every violation.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hf_ext", "dataset_builders")  # the top-level packages the wheel ships
OUTSIDE = ("benchmarks", "tests", "examples")  # repository folders the wheel does not ship


@dataclass(frozen=True)
class Edge:
    """``source`` (a module) imports ``target`` (a module, or a name outside the parsed packages)."""

    source: str
    target: str
    path: str  # the source file, relative to the repository root
    line: int
    module_level: bool  # False: inside a function (runs only when called)
    absolute: bool  # False: a relative import (``from .x import y``)

    def __str__(self) -> str:
        where = "module level" if self.module_level else "in a function"
        return f"{self.path}:{self.line}: {self.source} imports {self.target} ({where})"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover_modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """``{module name: file}`` for every ``.py`` file of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[_module_name(path, root)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.depth = 0  # function nesting
        self.found: list[tuple[str, int, bool, bool]] = []  # target, line, module_level, absolute

    def _add(self, target: str, node: ast.AST, absolute: bool) -> None:
        item = (target, node.lineno, self.depth == 0, absolute)
        if item not in self.found:  # `from x import a, b` is one arrow
            self.found.append(item)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs; only the else branch does
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node, absolute=True)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), self.package)
        else:
            base = node.module or ""
        for alias in node.names:
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name defined in pkg
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node, absolute=node.level == 0)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                self._add(node.args[0].value, node, absolute=True)
        self.generic_visit(node)


def collect_edges(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    """Every import statement of every module of ``packages`` (see the module docstring)."""
    modules = discover_modules(root, packages)
    known = set(modules)
    edges = []
    for module, path in modules.items():
        collector = _ImportCollector(module, path.name == "__init__.py", known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        rel = path.relative_to(root).as_posix()
        for target, line, module_level, absolute in collector.found:
            edges.append(Edge(module, target, rel, line, module_level, absolute))
    return edges


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def subpackage(module: str) -> str:
    """The node of the subpackage graph a module belongs to: ``hf_ext.models.muffin.x`` -> ``hf_ext.models``,
    ``hf_ext.cli`` -> ``hf_ext.cli``, ``hf_ext`` -> ``hf_ext``, ``dataset_builders.rlhf_v`` -> ``dataset_builders``,
    ``torch.nn`` -> ``torch``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hf_ext" else parts[0]


def find_cycle(edges: Iterable[tuple[str, str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the directed graph given by ``edges`` (self-loops ignored), or ``None``."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a != b:
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set())
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def describe_cycle(cycle: list[str], edges: list[Edge], key: Callable[[str], str]) -> str:
    """``a -> b -> a`` with, for each arrow, the import statement(s) that make it."""
    lines = [" -> ".join(cycle)]
    for a, b in zip(cycle, cycle[1:]):
        witnesses = [e for e in edges if key(e.source) == a and key(e.target) == b]
        lines += [f"  {a} -> {b}:"] + [f"    {e}" for e in witnesses[:5]]
    return "\n".join(lines)


@dataclass(frozen=True)
class Rule:
    """Modules matching ``source`` must not import modules matching ``target``."""

    name: str
    source: Callable[[str], bool]
    target: Callable[[Edge], bool]


def _in(*prefixes: str) -> Callable[[str], bool]:
    return lambda module: any(_within(module, p) for p in prefixes)


def _imports(*prefixes: str, module_level_only: bool = False) -> Callable[[Edge], bool]:
    return lambda e: any(_within(e.target, p) for p in prefixes) and (e.module_level or not module_level_only)


RULES: list[Rule] = [
    Rule(
        "hf_ext never imports the repository's benchmarks, tests or examples (the wheel does not ship them)",
        _in("hf_ext"),
        _imports(*OUTSIDE),
    ),
    Rule(
        "dataset_builders may import hf_ext but never benchmarks, tests or examples (it ships in the same wheel)",
        _in("dataset_builders"),
        _imports(*OUTSIDE),
    ),
    Rule(
        "only the front-ends (hf_ext.cli, hf_ext.apps) import dataset_builders; the core never does",
        lambda m: _within(m, "hf_ext") and not _in("hf_ext.cli", "hf_ext.apps")(m),
        _imports("dataset_builders"),
    ),
    Rule(
        "metrics import no pipelines and no trainers (shared code goes to a neutral module)",
        _in("hf_ext.metrics"),
        _imports("hf_ext.pipelines", "hf_ext.trainers"),
    ),
    Rule(
        "models know nothing of the hub, trainers, pipelines, metrics or testing",
        _in("hf_ext.models"),
        _imports("hf_ext.hub", "hf_ext.trainers", "hf_ext.pipelines", "hf_ext.metrics", "hf_ext.testing"),
    ),
    Rule(
        "model code imports hf_ext only relatively (it is shipped flat as Hub remote code)",
        _in("hf_ext.models"),
        lambda e: e.absolute and _within(e.target, "hf_ext"),
    ),
    Rule(
        "utils is the base layer: it imports no other hf_ext subpackage",
        _in("hf_ext.utils"),
        _imports(
            "hf_ext.apps",
            "hf_ext.cli",
            "hf_ext.hub",
            "hf_ext.metrics",
            "hf_ext.models",
            "hf_ext.pipelines",
            "hf_ext.testing",
            "hf_ext.trainers",
        ),
    ),
    Rule(
        "only hf_ext.testing imports hf_ext.testing at module level (test support is never a runtime dependency)",
        lambda m: not _in("hf_ext.testing")(m),
        _imports("hf_ext.testing", module_level_only=True),
    ),
]


def arrow_violations(edges: list[Edge], rules: list[Rule] = RULES) -> list[str]:
    """``"rule: file:line: a imports b"`` for each import that breaks one of ``rules``."""
    return [f"{rule.name}:\n    {e}" for rule in rules for e in edges if rule.source(e.source) and rule.target(e)]


def _internal(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if e.module_level and _within(e.target, "hf_ext") and _within(e.source, "hf_ext")]


# ----------------------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return collect_edges()


def test_the_parser_sees_relative_absolute_function_level_and_type_checking_imports(tmp_path):
    """The collector on a package written here, whose imports are known by construction."""
    files = {
        "pkg/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "pkg/a/__init__.py": "from . import x\nfrom ..b import B\n",
        "pkg/a/x.py": "import os\n\ndef f():\n    from pkg.b import B\n    import importlib\n"
        "    return importlib.import_module('pkg.a')\n",
        "pkg/b.py": "class B:\n    from .a import x\n",
    }
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(src)
    got = {(e.source, e.target, e.line, e.module_level, e.absolute) for e in collect_edges(tmp_path, ["pkg"])}
    assert got == {
        ("pkg", "typing", 1, True, True),
        ("pkg.a", "pkg.a.x", 1, True, False),
        ("pkg.a", "pkg.b", 2, True, False),
        ("pkg.a.x", "os", 1, True, True),
        ("pkg.a.x", "pkg.b", 4, False, True),
        ("pkg.a.x", "importlib", 5, False, True),
        ("pkg.a.x", "pkg.a", 6, False, True),
        ("pkg.b", "pkg.a.x", 2, True, False),  # a class body runs at import time
    }


def test_find_cycle_on_known_graphs():
    assert find_cycle([("a", "b"), ("b", "c"), ("a", "c")]) is None
    assert find_cycle([("a", "a")]) is None
    assert find_cycle([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == ["a", "b", "c", "a"]


def test_rules_catch_a_known_bad_edge():
    bad = Edge("hf_ext.models._registry", "hf_ext.hub.remote_code", "x.py", 3, False, False)
    fine = Edge("hf_ext.hub.remote_code", "hf_ext.models._registry", "y.py", 9, False, False)
    found = arrow_violations([bad, fine])
    (models_rule,) = [r for r in RULES if r.name.startswith("models know nothing")]
    assert found == [f"{models_rule.name}:\n    {bad}"]


def test_every_module_is_parsed(edges):
    """Sanity: the walk covers the packages (a wrong root would make every check below pass vacuously)."""
    sources = {e.source for e in edges}
    for module in ("hf_ext", "hf_ext.cli", "hf_ext.models.muffin.modeling_muffin", "hf_ext.hub.remote_code"):
        assert module in sources
    assert any(e.source.startswith("dataset_builders") for e in edges)


def test_subpackage_graph_has_no_cycle(edges):
    """Module-level imports (what runs on import) between hf_ext's subpackages form no cycle."""
    internal = _internal(edges)
    cycle = find_cycle((subpackage(e.source), subpackage(e.target)) for e in internal)
    assert cycle is None, "import cycle between hf_ext subpackages:\n" + describe_cycle(cycle, internal, subpackage)


def test_module_graph_has_no_cycle(edges):
    """Module-level imports between hf_ext's modules form no cycle (so no import order can meet a half-built module)."""
    internal = _internal(edges)
    cycle = find_cycle((e.source, e.target) for e in internal)
    assert cycle is None, "import cycle between hf_ext modules:\n" + describe_cycle(cycle, internal, lambda m: m)


def test_subpackage_arrows_run_one_way_counting_function_level_imports(edges):
    """Arrows one way: also the imports inside functions (lazy, but still a dependency) form no subpackage cycle."""
    internal = [e for e in edges if _within(e.source, "hf_ext") and _within(e.target, "hf_ext")]
    internal = [e for e in internal if subpackage(e.source) != "hf_ext"]  # the root's lazy exports point everywhere
    cycle = find_cycle((subpackage(e.source), subpackage(e.target)) for e in internal)
    assert cycle is None, "subpackages depend on each other both ways:\n" + describe_cycle(cycle, internal, subpackage)


@pytest.mark.parametrize("rule", RULES, ids=[r.name.split(" (")[0][:60] for r in RULES])
def test_no_forbidden_arrow(edges, rule):
    found = arrow_violations(edges, [rule])
    assert not found, "forbidden imports:\n" + "\n".join(found)


# ------------------------------------------------------------------------------------------- top-level public names

EXPORTING = ("models", "trainers", "pipelines")  # subpackages whose public classes `from hf_ext import X` reaches


def public_modules() -> list[str]:
    """Every public package/module directly under the exporting subpackages (``hf_ext.models.muffin``, ...)."""
    import pkgutil

    found = []
    for group in EXPORTING:
        for info in pkgutil.iter_modules([str(ROOT / "hf_ext" / group)]):
            if not info.name.startswith("_"):
                found.append(f"hf_ext.{group}.{info.name}")
    return sorted(found)


@pytest.fixture(scope="module")
def public_classes() -> list[tuple[str, str, type]]:
    """``(module, name, class)`` for every class named in the ``__all__`` of a module of :func:`public_modules`."""
    import importlib
    import inspect

    found = []
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            if inspect.isclass(getattr(module, name)):
                found.append((module_name, name, getattr(module, name)))
    return found


def test_every_public_class_is_importable_from_hf_ext(public_classes):
    import hf_ext

    assert len(public_classes) > 60, "the walk found too few classes: is the layout what public_modules() expects?"
    listed = set(dir(hf_ext))
    missing = [f"{m}.{n}" for m, n, _ in public_classes if n not in listed]
    assert not missing, f"not listed by dir(hf_ext): {missing}"
    wrong = [f"{m}.{n}" for m, n, cls in public_classes if getattr(hf_ext, n, None) is not cls]
    assert not wrong, f"hf_ext.<name> is missing or another object than the subpackage's class: {wrong}"
    assert {n for _, n, _ in public_classes} <= set(hf_ext.__all__)


def test_hf_ext_exports_only_classes_named_in_an_all(public_classes):
    """The top-level table (read from the sources) holds exactly the classes of the ``__all__`` lists: a name whose
    ``__all__`` is not a literal list, or a CapWords name that is not a class, shows up here."""
    import hf_ext

    assert set(hf_ext._export_table()) == {n for _, n, _ in public_classes}


def test_type_checking_imports_match_the_exports():
    """The ``if TYPE_CHECKING:`` block of hf_ext/__init__.py (what IDEs and type checkers see) names every exported
    class once, from the module that lists it in ``__all__``."""
    import hf_ext

    tree = ast.parse((ROOT / "hf_ext" / "__init__.py").read_text(encoding="utf-8"))
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and _is_type_checking(n.test)]
    declared = {alias.name: f"hf_ext.{node.module}" for node in block.body for alias in node.names}
    table = hf_ext._export_table()
    lines = {f"    from .{m.removeprefix('hf_ext.')} import {n}  # noqa: F401" for n, m in table.items()}
    missing = sorted(line for line in lines if line.split(" import ")[1].split()[0] not in declared)
    assert not missing, "add to the TYPE_CHECKING block of hf_ext/__init__.py:\n" + "\n".join(missing)
    stale = sorted(set(declared) - set(table))
    assert not stale, f"remove from the TYPE_CHECKING block of hf_ext/__init__.py (no longer exported): {stale}"
    moved = {n: (declared[n], table[n]) for n in declared if declared[n] != table[n]}
    assert not moved, f"TYPE_CHECKING imports from another module than the export table (declared, table): {moved}"


def _fresh_interpreter(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


_HEAVY = "('torch', 'transformers', 'trl', 'diffusers')"


def test_import_hf_ext_imports_no_heavy_library():
    """``import hf_ext`` and listing its names import neither torch, transformers, trl nor diffusers."""
    code = f"import sys, hf_ext\nnames = dir(hf_ext)\nprint(sorted(m for m in {_HEAVY} if m in sys.modules))"
    assert _fresh_interpreter(code) == ["[]"]


@pytest.mark.slow
def test_a_model_class_from_hf_ext_imports_no_trainer_or_pipeline_library():
    """The first model class imports torch and transformers (and registers the models, with their Hub behaviour) but
    neither trl nor diffusers."""
    code = (
        "import sys\nfrom hf_ext import MuffinForConditionalGeneration\n"
        f"print(sorted(m for m in {_HEAVY} if m in sys.modules))\n"
        "print(MuffinForConditionalGeneration.from_pretrained._hf_ext_safe)"
    )
    assert _fresh_interpreter(code) == ["['torch', 'transformers']", "True"]


if __name__ == "__main__":
    all_edges = collect_edges()
    arrows: dict[tuple[str, str], int] = {}
    for e in _internal(all_edges):
        key = (subpackage(e.source), subpackage(e.target))
        if key[0] != key[1]:
            arrows[key] = arrows.get(key, 0) + 1
    print("module-level arrows between subpackages (count of import statements):")
    for (a, b), n in sorted(arrows.items()):
        print(f"  {a:<24} -> {b:<24} {n}")
    print("\nviolations:")
    print("\n".join(arrow_violations(all_edges)) or "  none")
    cycle = find_cycle(arrows)
    print("\nsubpackage cycle:", cycle and describe_cycle(cycle, _internal(all_edges), subpackage))
