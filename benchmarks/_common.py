"""What the benchmark scripts share: float64, output folders, tables, JSON and progress bars."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# jaxlib's LAPACK kernels (Cholesky, QR) run on scipy's OpenBLAS, whose worker threads spin
# against XLA's own thread pool: at N = 5000, M = 128 one SNR iteration took 11 ms with
# OpenBLAS threads and 5 ms without, on 2 cores. Every method in a benchmark runs in the same
# process under the same setting. Set before anything loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: results/)")
    return p


def machine() -> dict:
    """Where the figures were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def write_json(out: Path, name: str, payload: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(payload, indent=2, default=_default))
    return path


def _default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as a plain-text table; ``columns`` are ``(key, header)`` pairs."""
    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) for (_, h), w in zip(columns, widths))
    print(line)
    print("-" * len(line))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def progress(iterable, description: str, total: int | None = None):
    """``iterable`` with a tqdm progress bar on stderr (stdout keeps the printed tables),
    cleared when the loop ends. For the outer loops of a benchmark (problems, starts, sizes,
    rounds), whose iterations take seconds: the bar moves between iterations, never inside a
    timed region."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False, file=sys.stderr)
