"""Test configuration: float64 and strict dtype and rank promotion everywhere."""

import gc

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


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
