"""The ``# Copied from diffusers...`` markers in hf_ext's pipelines are true.

As in diffusers (``make fix-copies``), a method marked ``# Copied from diffusers.<module>.<Class>.<method>`` must equal
that method of the *installed* diffusers after the marker's ``with old->new`` renames (blank lines aside); a method
that differs says ``# Adapted from`` instead, and that reference must exist. The reference source comes from
``inspect.getsource`` on diffusers itself, independent of hf_ext.
"""

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import hf_ext.pipelines

MARKER = re.compile(r"^\s*# (Copied|Adapted) from (diffusers(?:\.\w+)+)(?: with (.+))?$")
PIPELINES = Path(hf_ext.pipelines.__file__).parent


def _markers():
    found = []
    for path in sorted(PIPELINES.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = MARKER.match(line)
            if match:
                found.append(pytest.param(path, number, *match.groups(), id=f"{path.name}:{number}"))
    return found


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = inspect.getattr_static(obj, attr)  # a property stays a property
        return obj
    raise ImportError(dotted)


def _code_lines(source: str) -> list[str]:
    """The lines from ``def`` to the end (decorators and marker comments above it dropped), blank lines dropped."""
    lines = textwrap.dedent(source).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def "))
    return [line.rstrip() for line in lines[start:] if line.strip()]


def _marked_function(path: Path, marker_line: int) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    def_line = marker_line + 1
    while lines[def_line - 1].strip().startswith("#"):  # a "# (differs: ...)" note under an Adapted marker
        def_line += 1
    functions = {
        node.lineno: node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert def_line in functions, f"{path.name}:{marker_line}: the marker must stand right above a `def`"
    node = functions[def_line]
    return _code_lines("\n".join(lines[node.lineno - 1 : node.end_lineno]))


def _apply_renames(code: list[str], renames: str | None) -> list[str]:
    if not renames:
        return code
    pairs = [tuple(part.strip() for part in item.split("->")) for item in renames.split(",")]
    out = []
    for line in code:
        for old, new in pairs:
            line = line.replace(old, new)
        out.append(line)
    return out


def test_markers_exist_where_the_paint_and_iap_pipelines_follow_stable_diffusion():
    marked = {(Path(p.values[0]).name, p.values[2]) for p in _markers()}
    assert ("pipeline_viscpm_paint.py", "Copied") in marked
    assert ("pipeline_viscpm_paint.py", "Adapted") in marked
    assert ("pipeline_iap.py", "Adapted") in marked


@pytest.mark.parametrize(("path", "line", "kind", "reference", "renames"), _markers())
def test_marker_is_true(path, line, kind, reference, renames):
    target = _resolve(reference)
    function = target.fget if isinstance(target, property) else target
    assert callable(function), f"{reference} is not a function or property"
    ours = _marked_function(path, line)
    theirs = _apply_renames(_code_lines(inspect.getsource(inspect.unwrap(function))), renames)
    if kind == "Copied":
        assert ours == theirs, (
            f"{path.name}:{line} says `Copied from {reference}` but the code differs from the installed diffusers; "
            "copy it again or say `Adapted from`."
        )
    else:
        assert ours != theirs, f"{path.name}:{line} is an exact copy of {reference}: say `Copied from`."
