"""The documentation builds (mkdocs --strict) and every public docstring's example runs."""

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

import infinite_descent as idn

REPO = Path(__file__).resolve().parent.parent
PUBLIC = [getattr(idn, n) for n in idn.__all__ if n != "problems"] + [
    getattr(idn.problems, n) for n in ("paper_toy", "paper_toy_start", "random_toy_start",
                                       "lanczos3", "toy_exact_solution")
]


@pytest.mark.parametrize("obj", PUBLIC, ids=[o.__name__ for o in PUBLIC])
def test_public_names_are_documented_with_a_runnable_example(obj):
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 200, f"{obj.__name__} needs a docstring"
    examples = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert examples, f"{obj.__name__}'s docstring has no example"
    x, y = idn.problems.paper_toy()
    # The names a reader of the docs has at hand: the toy data, a model, a start, gradients.
    namespace = {"jax": jax, "jnp": jnp, "eqx": eqx, "optax": optax, "idn": idn, "x": x,
                 "y": y, "start": idn.problems.paper_toy_start(),
                 "model": idn.problems.paper_toy_start(), "grads": None}
    for example in examples:
        exec(compile(example, f"<{obj.__name__} docstring>", "exec"), namespace)


@pytest.mark.skipif(shutil.which("mkdocs") is None and
                    not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed")
def test_documentation_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d",
                          str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("solve_once", "resummed_residual", "GridData", "RESULTS", "paper_toy"):
        assert name in api
