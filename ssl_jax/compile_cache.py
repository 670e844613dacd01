"""JAX's persistent compilation cache for a run.

A restart (after preemption, a crash or a finished run extended) compiles the
same train step, calibration and evaluation programs again: at ImageNet
shapes that is minutes per start on every host. `config.compilation_cache_dir`
points JAX's own persistent cache (`jax_compilation_cache_dir`) at a folder
that survives the run, by default `<workdir>/compilation_cache`, so a restart
reads the compiled executables back instead.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import jax

from ssl_jax import storage

# The config value that means "a folder under the workdir".
IN_WORKDIR = "workdir"
FOLDER = "compilation_cache"


# Where "workdir" puts the cache when the workdir is on an object store: a local
# folder (keys are hashes of the programs, so runs can share it).
LOCAL_FALLBACK = "~/.cache/ssl_jax/compilation_cache"


def cache_dir(config, workdir: str) -> Optional[str]:
  """The folder `config.compilation_cache_dir` names for a run in `workdir`, or None (off).

  "workdir" is `<workdir>/compilation_cache` on a disk; with a gs:// workdir it
  is LOCAL_FALLBACK, since every compile would otherwise wait on the object store
  (a gs:// folder named explicitly is used as given).
  """
  value = str(config.get("compilation_cache_dir", IN_WORKDIR) or "")
  if not value:
    return None
  if value == IN_WORKDIR:
    if storage.is_remote(workdir):
      return storage.absolute(LOCAL_FALLBACK)
    return storage.absolute(storage.join(workdir, FOLDER))
  return storage.absolute(value)


def enable(config, workdir: str, log: Callable[[str], None] = print) -> Optional[str]:
  """Points JAX's persistent compilation cache at the run's folder; returns it (None: off).

  A cache the environment already names (JAX_COMPILATION_CACHE_DIR, e.g. one
  shared by a test session) is kept, so that every run there shares it.
  """
  env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if env:
    return env
  path = cache_dir(config, workdir)
  if path is None:
    return None
  if jax.config.jax_compilation_cache_dir != path:
    from jax.experimental.compilation_cache import compilation_cache
    compilation_cache.reset_cache()   # a cache used before in this process reopens here
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program, not only those over JAX's default 1 s of compile time: which
    # programs a restart finds must not depend on how busy the machine was, and
    # the evaluation's many small programs add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  log(f"compilation cache: {path} (a restart reads the compiled programs back)")
  return path
