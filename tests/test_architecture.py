"""The house rules of docs/ARCHITECTURE.md, checked on the source: the library imports neither Ray nor the launcher
(at any depth, lazy imports included), the package import graph has no cycle, and no source file is huge."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("overparam_dist", "launcher")
MAX_LINES = 420  # "no file over about 400 lines"


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module `name` imports, anywhere in the file (function-level imports too), resolved to full names."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            submodules = {f"{mod}.{a.name}" for a in node.names} & set(modules)
            if not node.module and len(submodules) == len(node.names):
                found |= submodules  # `from . import x, y` of submodules only: not the package's own names
            else:
                found.add(mod)
                found |= submodules  # `from . import x` imports the module x
    return found


def test_library_never_imports_ray_or_the_launcher():
    modules = _modules()
    bad = {}
    for name, path in modules.items():
        if not name.startswith("overparam_dist"):
            continue
        hits = sorted(m for m in _imports(name, path, modules)
                      if m.split(".")[0] in ("ray", "launcher"))
        if hits:
            bad[name] = hits
    assert bad == {}


def test_inner_layering():
    """parallel/ never imports metrics/ (both use parallel/shard_view.py); model files import only models/layers."""
    modules = _modules()
    deps = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert {n: sorted(d) for n, d in deps.items() if n.startswith("overparam_dist.parallel")
            and any(m.startswith("overparam_dist.metrics") for m in d)} == {}
    for arch in ("fc", "cnn", "resnet"):
        internal = {m for m in deps[f"overparam_dist.models.{arch}"] if m.startswith("overparam_dist")}
        assert internal <= {"overparam_dist.models.layers", "overparam_dist.models"}, (arch, internal)


def test_library_import_loads_no_ray_at_runtime():
    """Import every library module (and run a tiny trial): neither ray nor launcher ends up in sys.modules."""
    code = (
        "import importlib, pkgutil, sys, tempfile\n"
        "import overparam_dist\n"
        "for m in pkgutil.walk_packages(overparam_dist.__path__, 'overparam_dist.'):\n"
        "    importlib.import_module(m.name)\n"
        "from overparam_dist.config import load_config\n"
        "from overparam_dist.train import run_trial\n"
        "d = tempfile.mkdtemp()\n"
        "s = run_trial(load_config(None, [f'run.dir={d}/t', 'train.steps=2', 'model.width=16', 'data.n=8',\n"
        "                                 'wandb.mode=disabled', 'run.quiet=true']))\n"
        "assert s['steps'] == 2, s\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'launcher')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes, or None (iterative DFS, three colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in graph:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_package_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: {m for m in _imports(name, path, modules) if m in modules and m != name}
             for name, path in modules.items()}
    assert _cycle(graph) is None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_is_huge():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}
