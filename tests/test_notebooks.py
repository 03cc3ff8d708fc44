"""Every notebook runs, top to bottom, on the installed package (a notebook that never runs is broken).

The kernel gets ``IDN_NOTEBOOK_SMOKE=1``: each notebook then runs every cell, and its own checks,
at smaller sizes (fewer starts, steps and points; 01 to 03 mark where, 04 runs as it is), to
keep CI short. A normal run (Colab, locally) does not set it and runs the full sizes."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("IDN_NOTEBOOK_SMOKE", "1")  # the kernel inherits the environment
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors
