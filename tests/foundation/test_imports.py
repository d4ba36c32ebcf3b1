"""The import graph of factory/ and train/, read from the source (module- and function-level imports):
factory's stages (a package with its subpackages) import each other without a cycle, no module imports a
private name (`_x`) of another stage or of train/, train/ imports nothing of factory but its core,
and the core's __init__ imports nothing (so `import factory.core` stays light on a torch-only host)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file; `from a import b` counts as a.b when that is a module."""
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                sub_path = ROOT / Path(*sub.split("."))
                out.add(sub if sub_path.is_dir() or sub_path.with_suffix(".py").exists() else base)
    return out


def _node(module: str) -> str | None:
    """The stage a factory module belongs to: factory.<package> for anything inside a package (its subpackages
    such as factory.ablate.search fold into it), the module itself at the top of factory/ (factory.demo).
    None for modules outside factory."""
    parts = module.split(".")
    if parts[0] != "factory" or len(parts) < 2:
        return None
    top = ROOT / "factory" / parts[1]
    return f"factory.{parts[1]}" if top.is_dir() or top.with_suffix(".py").exists() else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "factory").rglob("*.py")):
        src = _node(_module(path))
        if src is None:  # factory/__init__.py
            continue
        deps = {_node(m) for m in _imports(path)} - {None, src}
        graph.setdefault(src, set()).update(deps)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_factory_packages_import_each_other_without_a_cycle():
    graph = _graph()
    assert {"factory.core", "factory.seeds", "factory.mix", "factory.evaluate", "factory.ablate", "factory.demo"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_train_imports_nothing_of_factory_but_the_core():
    bad = [f"{path.relative_to(ROOT)}: {m}" for path in sorted((ROOT / "train").rglob("*.py")) for m in _imports(path)
           if m.split(".")[0] == "factory" and m != "factory.core" and not m.startswith("factory.core.")]
    assert not bad, bad


def test_core_init_imports_nothing():
    tree = ast.parse((ROOT / "factory" / "core" / "__init__.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not imports, [ast.unparse(n) for n in imports]


def _private_imports(path: Path) -> list[str]:
    """`from a.b import _x` where a.b is another stage's module (or train's)."""
    own = _node(_module(path)) or _module(path).split(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            other = _node(node.module) or node.module.split(".")[0]
            if other != own and node.module.split(".")[0] in ("factory", "train"):
                out += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return out


def test_no_stage_imports_a_private_name_of_another():
    bad = [x for d in ("factory", "train") for path in sorted((ROOT / d).rglob("*.py")) for x in _private_imports(path)]
    assert not bad, bad
