"""The shape of the code (issue 16): layers that import only downwards, no import circles,
one vocabulary of error kinds and HTTP error codes.

The import graph is read from the source (every ``import`` statement, also those inside
functions, since a lazy import still ties two modules together), so these tests need no
optional extra.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _modules(root: Path, prefix: str = "") -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[prefix + ".".join(parts)] = path
    return out


@functools.cache
def _src_graph() -> dict[str, set[str]]:
    """The import graph of src/, read once for every test here."""
    return _graph(_modules(SRC))


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                while t and t not in modules:  # an attribute import: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_src():
    assert _cycles(_src_graph()) == []


def test_no_import_circles_in_benchmarks():
    mods = _modules(REPO / "benchmarks")
    assert _cycles(_graph(mods)) == []


@pytest.mark.parametrize("layer", ["hybridgl.jobs", "hybridgl.eval", "hybridgl.search"])
def test_jobs_import_nothing_from_the_faces(layer):
    graph = _src_graph()
    bad = {
        (m, t)
        for m, targets in graph.items()
        if m == layer or m.startswith(layer + ".")
        for t in targets
        if t.startswith(("hybridgl.cli", "hybridgl.server"))
    }
    assert bad == set()


def test_the_core_imports_no_face_or_job():
    graph = _src_graph()
    core = [
        m
        for m in graph
        if m.startswith("hybridgl.")
        and not m.startswith(("hybridgl.cli", "hybridgl.server", "hybridgl.jobs"))
        and m not in ("hybridgl.eval.runner", "hybridgl.search.index")
        and not m.startswith(("hybridgl.eval.", "hybridgl.search."))
    ]
    bad = {
        (m, t)
        for m in core
        for t in graph[m]
        if t.startswith(("hybridgl.cli", "hybridgl.server", "hybridgl.jobs"))
    }
    assert bad == set()


# --------------------------------------------------------------------------- vocabularies


def test_every_error_kind_a_job_names_is_in_the_one_list():
    """Every kind a job writes into a failed record (the last argument of its record
    helpers, or ``kind=``) is one of :data:`hybridgl.errors.ERROR_KINDS`."""
    from hybridgl.errors import ERROR_KINDS

    helpers = {"failed_record", "_ImageFailure", "_error_record", "error_record_fields"}
    named = set()
    for path in [
        *(SRC / "hybridgl" / "jobs").glob("*.py"),
        *(SRC / "hybridgl" / "eval").glob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name not in helpers:
                continue
            args = [*node.args[2:], *(k.value for k in node.keywords if k.arg == "kind")]
            if name == "error_record_fields":
                args = [*node.args[1:], *(k.value for k in node.keywords if k.arg == "kind")]
            if name == "_ImageFailure":
                args = node.args[1:]
            named.update(a.value for a in args if isinstance(a, ast.Constant) and a.value)
    assert {"bad_image", "prediction_failed", "bad_proposals"} <= named  # the scan works
    assert named - set(ERROR_KINDS) == set()


def test_every_http_error_code_has_one_status_and_is_documented():
    from hybridgl.server.errors import ERROR_CODES

    used: dict[str, set[int]] = {}
    call = re.compile(r"""(?:ApiError|error_response)\(\s*(\d{3}),\s*["']([a-z_]+)["']""")
    for path in (SRC / "hybridgl" / "server").rglob("*.py"):
        for status, code in call.findall(path.read_text(encoding="utf-8")):
            used.setdefault(code, set()).add(int(status))
    assert used
    for code, statuses in used.items():
        assert statuses == {ERROR_CODES[code]}, code
    doc = (REPO / "docs" / "SERVER.md").read_text(encoding="utf-8")
    undocumented = [c for c in ERROR_CODES if f"`{c}`" not in doc]
    assert undocumented == []
