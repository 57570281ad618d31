"""Structure rules of issue #20, checked from the source (standard-library ``ast``, no server, well under a second):
product and benchmark code never import the tests, the wire schema (``mmsearch_schema``) has a neutral owner (the
services never import the client, the schema imports neither, nor anything but the standard library and pydantic),
no import cycle among the modules, and no function in ``service/``, the client or the schema above cyclomatic
complexity 15 (radon's counting) except those listed in ``COMPLEX``."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "service": REPO / "service",
    "mmsearch_client": REPO / "clients" / "python" / "mmsearch_client",
    "mmsearch_schema": REPO / "schema" / "mmsearch_schema",
    "bench": REPO / "bench",
    "tests": REPO / "tests",
    "loadtest": REPO / "loadtest",
}
NEVER_IMPORTS = {
    # package -> the packages it must never import (issue #20: the wire schema is neither the server's nor the client's)
    "service": {"mmsearch_client"},
    "mmsearch_schema": {"service", "mmsearch_client", "bench", "tests", "loadtest"},
}
SCHEMA_THIRD_PARTY = {"pydantic"}
"""What ``mmsearch_schema`` may import besides the standard library and itself: schema/pyproject.toml's dependencies."""
MAX_COMPLEXITY = 15
COMPLEX: dict[str, int] = {
    # function -> its complexity today; each is to be split (issue #20), none may grow and no other may join
}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for f in root.rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = f
    return out


def _imports(name: str, f: Path, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports (module level or in a function); ``from a import b`` is ``a.b`` if a module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            while t not in modules and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in modules and t != name:
                out.add(t)
    return out


def _forbidden_imports(modules: dict[str, Path], rules: dict[str, set[str]]) -> dict[str, list[str]]:
    """Module -> the modules it imports from a package ``rules`` forbids to its own package."""
    found: dict[str, list[str]] = {}
    for name, f in modules.items():
        banned = rules.get(name.split(".")[0], set())
        hits = sorted(t for t in _imports(name, f, modules) if t.split(".")[0] in banned)
        if hits:
            found[name] = hits
    return found


def _top_level_imports(f: Path) -> set[str]:
    """The top-level package of every absolute import in ``f`` (module level or in a function)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def complexity(fn: ast.AST) -> int:
    """Radon's cyclomatic complexity of a function (nested functions count in their parent, as radon's closures)."""
    c = 1
    for n in ast.walk(fn):
        if isinstance(n, ast.If | ast.IfExp | ast.Assert | ast.match_case | ast.Lambda):
            c += 1
        elif isinstance(n, ast.For | ast.AsyncFor | ast.While):
            c += 1 + bool(n.orelse)
        elif isinstance(n, ast.Try):
            c += len(n.handlers) + bool(n.orelse)
        elif isinstance(n, ast.BoolOp):
            c += len(n.values) - 1
        elif isinstance(n, ast.comprehension):
            c += 1 + len(n.ifs)
    return c


def function_complexities(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[prefix + node.name] = complexity(node)
        elif isinstance(node, ast.ClassDef):
            out |= function_complexities(node, f"{prefix}{node.name}.")
    return out


def test_service_and_bench_never_import_the_tests() -> None:
    modules = _modules()
    bad = {
        name: sorted(t for t in _imports(name, f, modules) if t.split(".")[0] == "tests")
        for name, f in modules.items()
        if name.split(".")[0] in ("service", "mmsearch_client", "mmsearch_schema", "bench", "loadtest")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_wire_schema_has_a_neutral_owner(tmp_path: Path) -> None:
    """The services import the wire schema from ``mmsearch_schema``, never from the client; the schema imports
    neither the services nor the client (nor bench, tests, loadtest), and nothing outside the standard library but
    pydantic, so that it installs alone (the bento's wheel) and either side can change without the other."""
    modules = _modules()
    assert _forbidden_imports(modules, NEVER_IMPORTS) == {}
    schema = {name: f for name, f in modules.items() if name.split(".")[0] == "mmsearch_schema"}
    assert {"mmsearch_schema.wire", "mmsearch_schema.fields", "mmsearch_schema.errors"} <= set(schema)  # scanned
    allowed = set(sys.stdlib_module_names) | SCHEMA_THIRD_PARTY | {"mmsearch_schema", "__future__"}
    outside = {name: sorted(_top_level_imports(f) - allowed) for name, f in schema.items()}
    assert not {k: v for k, v in outside.items() if v}, outside
    project = tomllib.loads((REPO / "schema" / "pyproject.toml").read_text())["project"]
    assert {re.split(r"[^A-Za-z0-9_.-]", d, maxsplit=1)[0] for d in project["dependencies"]} == SCHEMA_THIRD_PARTY
    # the checkers find a violation when there is one: each import form, at module level or in a function
    (tmp_path / "x.py").write_text("from mmsearch_client.schemas import Item\n")
    (tmp_path / "y.py").write_text("import mmsearch_client\n")
    (tmp_path / "z.py").write_text("def f():\n    from service import config\n    import httpx\n")
    (tmp_path / "empty.py").write_text("")
    fake = {"service.x": tmp_path / "x.py", "service.y": tmp_path / "y.py", "mmsearch_schema.z": tmp_path / "z.py"}
    fake |= {
        m: tmp_path / "empty.py" for m in ("mmsearch_client", "mmsearch_client.schemas", "service", "service.config")
    }
    assert _forbidden_imports(fake, NEVER_IMPORTS) == {
        "service.x": ["mmsearch_client.schemas"],
        "service.y": ["mmsearch_client"],
        "mmsearch_schema.z": ["service.config"],
    }
    assert _top_level_imports(tmp_path / "z.py") - allowed == {"httpx", "service"}


def _private_imports(f: Path) -> list[str]:
    """``module:name`` for each private name (``_x``, not ``__x__``) that ``f`` imports from one of our packages."""
    out: list[str] = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in PACKAGES:
            out += [f"{node.module}:{a.name}" for a in node.names if a.name.startswith("_") and a.name[1:2] != "_"]
    return out


def test_no_private_name_is_imported_from_another_module(tmp_path: Path) -> None:
    """A module's ``_names`` are its own (issue #20 point 4): what another module needs is public, so a private
    name's callers are all in its file and it can change without a search of the repository."""
    found = {name: hits for name, f in _modules().items() if (hits := _private_imports(f))}
    assert found == {}
    # the checker finds one when there is one, at module level or in a function, and passes dunders and others
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from service.media import _x, y\nfrom os import _exit\nfrom service import __version__\n"
        "def f():\n    from tests.support.env import _z\n"
    )
    assert _private_imports(probe) == ["service.media:_x", "tests.support.env:_z"]


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, f, modules) for name, f in modules.items()}
    assert _cycles(graph) == []
    # the checker finds a cycle when there is one
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_above_complexity_15() -> None:
    found: dict[str, int] = {}
    for package in ("service", "mmsearch_client", "mmsearch_schema"):
        for f in sorted(PACKAGES[package].rglob("*.py")):
            where = f.relative_to(REPO).as_posix()
            for name, c in function_complexities(ast.parse(f.read_text())).items():
                if c > MAX_COMPLEXITY:
                    found[f"{where}:{name}"] = c
    grown = {k: v for k, v in found.items() if v > COMPLEX.get(k, MAX_COMPLEXITY)}
    assert not grown, grown
    assert not set(COMPLEX) - set(found), f"split, or gone: remove from COMPLEX: {set(COMPLEX) - set(found)}"
    fn = ast.parse("def f(a):\n    if a and a > 1 or a < -1:\n        return [x for x in a if x]\n    return 0\n")
    assert complexity(fn.body[0]) == 1 + 1 + 2 + 2  # if, two boolean operators, a comprehension with a filter
