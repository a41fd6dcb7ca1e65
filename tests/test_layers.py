"""Imports run one way: no import circles between modules, and no module imports from a higher layer.

Every `import` / `from ... import` of the package counts, also those inside functions (a lazy import is still
a dependency). Layers, low to high (a module may import its own layer and the ones below):

    0  capalign (the package's __init__), io, utils, stats, config, devices
    1  models
    2  data
    3  metrics
    4  training (what every method shares), caption, plotting
    5  the methods: nano, vizer, style, rl, judge
    6  study, reports
    7  cli, demo, __main__
"""

from __future__ import annotations

import ast
from pathlib import Path

import capalign

ROOT = Path(capalign.__file__).parent
LAYERS = {
    **{m: 0 for m in ("capalign", "io", "utils", "stats", "config", "devices")},
    "models": 1, "data": 2, "metrics": 3,
    **{m: 4 for m in ("training", "caption", "plotting")},
    **{m: 5 for m in ("nano", "vizer", "style", "rl", "judge")},
    **{m: 6 for m in ("study", "reports")},
    **{m: 7 for m in ("cli", "demo", "__main__")},
}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ["capalign", *p.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that `name` imports (a `from X import y` that names a submodule counts as that module)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "capalign"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "capalign":
                continue
            subs = {f"{mod}.{a.name}" for a in node.names} & known
            out |= subs if subs else {mod}
            if subs and len(subs) < len(node.names):
                out.add(mod)
    return {m for m in out if m in known and m != name}


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "capalign"]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if (m.split(".")[1] if "." in m else "capalign") not in LAYERS] == []


def test_no_import_from_a_higher_layer():
    up = [f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})" for a, deps in graph().items() for b in sorted(deps) if layer(b) > layer(a)]
    assert up == []


def test_no_import_circles():
    g = graph()
    index, low, stack, on, order, cycles = {}, {}, [], set(), [0], []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = order[0]
        order[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
                cycles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The walk would fail on a real violation: a function-level relative import of a higher layer is found."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from ..study import layout\n    from .. import io\n")
    known = {"capalign.study.layout", "capalign.study", "capalign.io", "capalign"}
    assert imports("capalign.models.x", p, known) == {"capalign.study.layout", "capalign.io"}
