"""``import infinite_descent`` loads the solver alone: no benchmark harness, no heavy extras."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The benchmark harness and what only it (or the notebooks) needs.
NOT_LOADED = ("scipy", "matplotlib", "tqdm", "sklearn", "optimistix", "infinite_descent.bench")


def test_import_loads_no_harness_and_no_extras():
    # A fresh interpreter: this test process has loaded all of them already.
    code = (
        "import sys\n"
        "import infinite_descent\n"
        f"print(','.join(m for m in {NOT_LOADED!r} if m in sys.modules))\n"
        "print(infinite_descent.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout.splitlines()
    loaded, where = out[-2], out[-1]
    assert Path(where).resolve().parent.parent == REPO  # this checkout, not another install
    assert loaded == "", f"import infinite_descent loaded {loaded}"
