"""The layout's rules, checked on the source (docs/extending.md):

* no import cycle between sdparity modules, counting imports inside functions too, and no
  sdparity module imported by name (importlib/__import__: a loop the import graph cannot see);
* stages and backends never import each other, and reports never import stages or backends;
* layers point one way: the core < runner and check/ < commands/, app/, gpu/ < cli;
* no module outside sdparity/stages/ names a stage, except the tolerance table, the
  known-issues registry and the calibration (tables keyed by stage) and the generation loop
  (app/pipeline.py, which is the pipeline itself).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "sdparity"
STAGE_NAMES_ALLOWED = {"sdparity.tolerances", "sdparity.app.pipeline", "sdparity.known_issues"}
#: layer of a module: the first prefix it starts with (the rest is the core, layer 0)
LAYERS = (("sdparity.cli", 3), ("sdparity.__main__", 3), ("sdparity.commands", 2), ("sdparity.app", 2),
          ("sdparity.gpu", 2), ("sdparity.runner", 1), ("sdparity.check", 1))


def layer(mod: str) -> int:
    return next((n for prefix, n in LAYERS if mod == prefix or mod.startswith(prefix + ".")), 0)


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """sdparity modules imported anywhere in the file (resolved to the longest known module)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # "from pkg import sub" imports pkg.sub (a module) or a name defined in pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "sdparity":
                found.add(t)
    return found


def _graph():
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_layers_point_one_way():
    bad = []
    for mod, deps in _graph().items():
        for d in deps:
            if mod.startswith("sdparity.stages") and d.startswith("sdparity.backends"):
                bad.append((mod, d))
            if mod.startswith("sdparity.backends") and d.startswith("sdparity.stages"):
                bad.append((mod, d))
            if mod.startswith("sdparity.reports") and d.startswith(("sdparity.stages", "sdparity.backends")):
                bad.append((mod, d))
            if mod.startswith("sdparity.compile") and d.startswith(("sdparity.stages", "sdparity.backends",
                                                                     "sdparity.reports")):
                bad.append((mod, d))
            if layer(d) > layer(mod):  # an upward import: the core into the runner, a command into cli
                bad.append((mod, d))
    assert bad == []


def test_no_module_is_imported_by_name():
    """cli imports its command modules explicitly: a module reached through importlib (or
    __import__) by a name string is a dependency the import graph above cannot see. Allowed:
    a package discovering its own children (``f"{__name__}.{name}"``: stages/, backends/) and
    third-party modules (torch)."""
    rx = re.compile(r"(import_module|__import__)\(\s*(f?[\"']sdparity|[A-Za-z_][\w.]*\s*[,)])")
    assert rx.search("importlib.import_module(modname)") and rx.search('import_module("sdparity.x")')
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in PKG.rglob("*.py")
           for i, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line)]
    assert bad == [], "\n".join(bad)


def test_layers_are_what_the_tree_has():
    """Every layer prefix names a real module (a renamed folder must update LAYERS)."""
    mods = set(_modules())
    assert all(any(m == p or m.startswith(p + ".") for m in mods) for p, _ in LAYERS)


def test_no_stage_named_outside_stages():
    from sdparity.registry import all_stages

    names = sorted(all_stages())
    rx = re.compile(r"""["'](%s)["']""" % "|".join(map(re.escape, names)))
    bad = []
    for mod, path in _modules().items():
        if mod.startswith("sdparity.stages") or any(mod == a or mod.startswith(a + ".") for a in STAGE_NAMES_ALLOWED):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if rx.search(code):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert bad == [], "\n".join(bad)


def test_the_checker_sees_a_cycle():
    """The cycle finder is not vacuous: a two-module loop is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
