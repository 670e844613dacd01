"""Test setup: four fake CPU devices, so pmap tests run on any machine.

The flag must be set before JAX initialises its backend, i.e. before the first
test module imports jax; conftest.py is imported first by pytest.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
