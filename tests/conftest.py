"""Test setup: four fake CPU devices, so pmap tests run on any machine.

The flag must be set before JAX initialises its backend, i.e. before the first
test module imports jax; conftest.py is imported first by pytest.
"""

import atexit
import os
import shutil
import tempfile

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session, inherited by every CLI
# process a test starts: the multi-process, crash and resume tests start about
# twenty processes that compile the same tiny train step, and compiling was
# most of their run time (one such 4-device run: 76 s cold, 30 s with the
# cache warm, on 2 CPU cores shared with other work). A fresh directory per
# session, so no test reads executables that another checkout compiled; a
# cached executable is the compiled program itself, so no test's result changes.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="ssl_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)


import jax  # noqa: E402  (after the environment above)
import pytest  # noqa: E402

# The cache above serves the CLI processes the tests start. This long-lived
# process compiles each program once anyway; it does not write the cache, which
# only added work when it ran out of memory mappings (see the fixture below: its
# first segfault was inside jax's compilation_cache.put_executable_and_time).
jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops every compiled program after each test module.

  Each CPU executable XLA loads keeps memory mappings of its own, and this
  one process compiles hundreds: the default run passed 65,530 mappings
  (Linux's vm.max_map_count) in tests/test_train_step.py, where the next
  compile segfaulted (2026-12-03; 10,000 mappings after 2 minutes of tests
  without this). Later modules compile what they need again.
  """
  yield
  import gc
  from ssl_jax.evaluate import knn, linear
  knn.knn_program.cache_clear()
  linear.probe_program.cache_clear()
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """An uninterrupted local `tests.runs` run: what interrupted runs must equal."""
  from tests import runs
  workdir = tmp_path_factory.mktemp("reference")
  runs.run(workdir)
  return workdir
