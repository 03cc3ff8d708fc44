"""The structure the code promises: no import cycle, no package import inside a function, no
private name imported across the package's modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "infinite_descent"


def _modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name, path):
    """``(target module, imported names, inside a function)`` of each package import."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.startswith("infinite_descent"):
            yield target, [a.name for a in node.names], id(node) in in_function


def _graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, names, _ in _imports(name, path):
            deps.update(t for t in [target] + [f"{target}.{n}" for n in names] if t in modules)
        graph[name] = deps - {name}
    return graph


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(v, stack):
        state[v] = "open"
        for w in graph[v]:
            if state.get(w) == "open":
                cycles.append(stack[stack.index(w):] + [w])
            elif w not in state:
                visit(w, stack + [w])
        state[v] = "done"

    for v in graph:
        if v not in state:
            visit(v, [v])
    assert cycles == []


def test_no_package_import_inside_a_function_and_no_private_name_across_modules():
    for name, path in _modules().items():
        for target, names, inside in _imports(name, path):
            assert not inside, f"{path.name}: imports {target} inside a function"
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private {private} from {target}"
