"""Test configuration: float64 and strict dtype and rank promotion everywhere."""

import atexit
import gc
import os
import shutil
import tempfile

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

# One XLA compilation cache for the whole run, in a fresh temporary folder (removed at the
# end: nothing carries over between runs). A program that took 0.2 s or more to compile and
# is compiled again -- after `jax.clear_caches()` below, in another test file, or in a
# subprocess the tests start (benchmark scripts, notebook kernels, workers), which inherit the
# environment -- is read back instead of compiled: the same executable, not recompiled (the
# suite is mostly compilation on a CPU). Set JAX_COMPILATION_CACHE_DIR to choose the folder.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="infinite-descent-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop the compiled programs after each test file. Each XLA CPU executable holds a few
    memory mappings; the whole suite in one process compiles thousands of programs, and the
    mappings are bounded (vm.max_map_count, 65530 by default): one run of the suite ended in
    a segmentation fault inside XLA's compiler. After each file the count returns to its
    baseline."""
    yield
    jax.clear_caches()
    gc.collect()
