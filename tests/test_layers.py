"""The package's import graph: layers point down, no package loop, the core never imports an interface.

Read from the source with `ast` (nothing is imported), so an import inside a function counts as much as one
at the top of a file: a lazy import still ties two packages together.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dreambooth"

# Lowest first. A unit is a subpackage of dreambooth/ or a module at its top; it may import its own layer
# and the layers below it. DESIGN.md draws the same picture.
LAYERS = [
    {"errors"},
    {"platform"},                                   # host adapter, files, disk space, locks, path policy, deps
    {"registry", "config", "migrations", "store", "wizard"},  # the fields, db_config.json, a model's folder
    {"convert", "monitor"},                         # checkpoint formats; metrics.jsonl and its charts
    {"model"},                                      # text encoding, sampling, the tiny model, export to the host
    {"data"},                                       # images, captions, buckets, caches, class images
    {"train"},                                      # the loop and what it needs
    {"service"},                                    # operations and the one job runner
    {"tools"},                                      # bench, demo
    {"api", "ui", "cli", "__main__"},               # interfaces
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
INTERFACE_LIBRARIES = {"gradio", "fastapi", "starlette", "uvicorn"}
WEBUI_PACKAGE = "modules"  # the WebUI's own package: only the host adapter may import it
INTERFACE_RANK = RANK["api"]


def _module_name(path: Path) -> str:
    parts = ["dreambooth", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) for every import in the file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None:  # `from .. import x`: x may be a module
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
    return found


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "dreambooth" and len(parts) > 1 else None


def _graph():
    edges = defaultdict(set)  # unit -> units it imports
    where = {}
    outside = []  # (file, line, what) for interface libraries and the WebUI
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _unit(_module_name(path)) or "__init__"
        for target, line in _imports(path):
            unit = _unit(target)
            if unit is not None and unit != source:
                edges[source].add(unit)
                where.setdefault((source, unit), f"{path.relative_to(PACKAGE.parent)}:{line}")
            elif target.split(".")[0] in INTERFACE_LIBRARIES | {WEBUI_PACKAGE}:
                outside.append((path, line, target, source))
    return edges, where, outside


def _cycle(edges) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    assert units <= set(RANK), f"place these in LAYERS (and in DESIGN.md): {sorted(units - set(RANK))}"


def test_no_package_loop():
    edges, where, _ = _graph()
    loop = _cycle(edges)
    assert loop is None, "package loop: " + " -> ".join(loop) + " (" + ", ".join(
        where[(a, b)] for a, b in zip(loop, loop[1:])) + ")"


def test_imports_point_down_the_layers():
    edges, where, _ = _graph()
    upward = [f"{where[(a, b)]}: {a} (layer {RANK[a]}) imports {b} (layer {RANK[b]})"
              for a, targets in edges.items() if a in RANK for b in targets if RANK.get(b, -1) > RANK[a]]
    assert not upward, "\n".join(upward)


def test_the_core_never_imports_an_interface_or_the_webui():
    _, _, outside = _graph()
    wrong = []
    for path, line, target, unit in outside:
        top = target.split(".")[0]
        if top == WEBUI_PACKAGE and _module_name(path) != "dreambooth.platform.host":
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the WebUI's {target}")
        elif top in INTERFACE_LIBRARIES and RANK.get(unit, 0) < INTERFACE_RANK:
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} below the interfaces")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_loop_and_an_upward_import():
    # the rules above are only as good as the graph they read: a made-up loop must be found
    assert _cycle({"data": {"train"}, "train": {"data"}}) == ["data", "train", "data"]
    assert _cycle({"data": {"model"}, "train": {"data"}}) is None
    imports = dict(_imports(PACKAGE / "train" / "loop.py"))
    assert "dreambooth.train.plan" in imports and "dreambooth.monitor.metrics" in imports
