"""The package as a user gets it: the wheel built from this checkout, installed into a fresh
environment, runs the README's training loop from outside the checkout; the floors CI installs
are the floors pyproject.toml declares."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _readme_training_loop():
    """The ```python block under README.md's "## In a training loop" heading."""
    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## In a training loop\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## In a training loop' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert block, "README.md's '## In a training loop' section has no python block"
    return block.group(1)


def _build_wheel(out):
    """Builds the wheel offline with the hatchling of this environment (the tests extra has it);
    without it, pip fetches hatchling from the index, and the test is skipped if that fails."""
    isolated = importlib.util.find_spec("hatchling") is None
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "-w", str(out),
           str(REPO)]
    if isolated:
        cmd.remove("--no-index")
    else:
        cmd.insert(4, "--no-build-isolation")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and isolated:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        pytest.skip("cannot build the wheel: hatchling (in the tests extra) is not installed "
                    f"here, and pip could not fetch it (no index?): {last}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    wheels = list(out.glob("infinite_descent-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_the_built_wheel_installs_and_runs_the_readme_loop_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "infinite_descent/py.typed" in names
    assert "infinite_descent/_models/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "notebooks/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()

    # A fresh virtual environment outside the checkout. Its own site-packages gets the wheel
    # (by pip, with no dependencies); a .pth file then appends this environment's
    # site-packages, so jax and the rest are found without downloads. Lines of a .pth file do
    # not process the .pth files of the directory they add, so an editable install of this
    # checkout here stays invisible there.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "zz_test_environment.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True, timeout=300)

    script = _readme_training_loop() + (
        "\nimport importlib.resources, json, infinite_descent\n"
        "print('PACKAGING ' + json.dumps({'file': infinite_descent.__file__,\n"
        "    'typed': importlib.resources.files('infinite_descent')"
        ".joinpath('py.typed').is_file(),\n"
        "    'loss': float(state.loss_after)}))\n")
    (tmp_path / "readme_loop.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    run = subprocess.run([str(python), "readme_loop.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.split("PACKAGING ", 1)[1])
    installed = Path(report["file"]).resolve()
    assert installed.is_relative_to(site.resolve()), installed
    assert not installed.is_relative_to(REPO), installed
    assert report["typed"]
    # The README's own print line: the loss after the solve is at the float64 rounding floor.
    first_line = run.stdout.splitlines()[0].split()
    assert float(first_line[0]) == report["loss"] < 1e-20, run.stdout


def _floors():
    """name -> the version of each '>=' requirement of pyproject.toml (build system included)."""
    reqs = list(PYPROJECT["build-system"]["requires"]) + list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        reqs += extra
    floors = {}
    for req in map(Requirement, reqs):
        name = canonicalize_name(req.name)
        if name == "infinite-descent":
            continue
        (spec,) = req.specifier
        assert spec.operator == ">=", f"{req}: a floor is declared as '>='"
        assert floors.setdefault(name, Version(spec.version)) == Version(spec.version), req
        floors[name] = Version(spec.version)
    return floors


def test_the_floor_constraints_pin_exactly_the_declared_floors():
    pins = {}
    for line in (REPO / ".github" / "constraints-floor.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name.strip())] = Version(version.strip())
    floors = _floors()
    assert pins == floors, {n: (floors.get(n), pins.get(n)) for n in floors.keys() | pins.keys()
                            if floors.get(n) != pins.get(n)}
