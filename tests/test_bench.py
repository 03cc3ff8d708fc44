"""The benchmark harness ``infinite_descent.bench``: public API only, and what it draws."""

import ast
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import infinite_descent as idn
from infinite_descent.bench import starts, timing

REPO = Path(__file__).resolve().parent.parent
HARNESS = sorted((REPO / "infinite_descent" / "bench").glob("*.py"))
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))

def _imports(path):
    """``(module, names, line, at_top)`` for every import in the file (``at_top``: not inside
    a function); a relative module keeps its leading dots."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, (), node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""),
                          tuple(a.name for a in node.names), node.lineno, id(node) in top))
    return found


def _private(module, names=()):
    """Relative (inside the package), or a name with a leading underscore anywhere."""
    parts = [p for p in module.split(".") if p] + list(names)
    return module.startswith(".") or any(p.startswith("_") for p in parts)


def test_harness_uses_only_the_public_api_imported_at_the_top():
    assert {p.name for p in HARNESS} >= {"__init__.py", "peers.py", "reproduction.py",
                                         "timing.py", "starts.py"}
    for path in HARNESS:
        source = path.read_text()
        assert "idn._" not in source, path.name
        for module, names, line, at_top in _imports(path):
            if module == "__future__":
                continue
            assert not _private(module, names), f"{path.name}:{line} imports {module} {names}"
            if module.startswith("infinite_descent"):
                assert at_top, f"{path.name}:{line} imports {module} inside a function"


def test_benchmarks_and_notebooks_use_no_private_names():
    used = set()
    for path in BENCHMARKS:
        for module, names, _, _ in _imports(path):
            if module.startswith("infinite_descent") and _private(module, names):
                used.add((path.name, module))
    assert used == set()
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            assert "infinite_descent._" not in "".join(cell["source"]), path.name


def test_perturbed_starts_are_the_ones_multistart_draws():
    x, y = idn.problems.paper_toy()
    model = idn.problems.paper_toy_start()
    key = jax.random.key(3)
    batch = starts.perturbed(model, 4, key, 0.3)
    ours = []
    for k in range(4):
        start = jax.tree.map(lambda a, k=k: a[k], batch)
        ours.append(float(jnp.sum((jax.vmap(start)(x) - y) ** 2)))
    first = jax.tree.map(lambda a: a[0], batch)
    assert all(jnp.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(first), jax.tree.leaves(model)))
    _, info = idn.multistart(model, x, y, num_starts=4, key=key, spread=0.3, max_steps=1,
                             segment_steps=1)
    np.testing.assert_allclose(np.asarray(info.initial_loss), ours, rtol=1e-10)
    assert len(set(ours)) == 4  # the other three did move


def test_iteration_time_runs_on_the_public_api():
    row = timing.iteration_time(200, 1, 2, 1, steps=(1, 2), repeats=1)
    assert row["N"] == 200 and row["M"] == 8 and row["dtype"] == "float64"
    assert row["data_passes_per_iteration"] >= 1 and row["gram_floor_ms"] > 0
