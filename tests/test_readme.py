"""The README's training-loop example runs as written."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_training_loop_example_runs_as_written():
    text = README.read_text()
    section = text.split("## In a training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    loss, inner_steps, passes = float(out[0]), int(out[1]), int(out[2])
    assert loss < 1e-20
    assert passes == inner_steps + 2  # step zero (values only), the start, one per iteration


def test_physics_informed_example_runs_as_written():
    text = README.read_text()
    section = text.split("## Physics-informed residuals", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 17
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    loss, error = float(out[0]), float(out[2])
    assert loss < 1e-20
    assert error < 1e-10
