"""Argument validation shared by the pure functions: clear `ValueError`s at trace time.

JAX reports a shape mismatch deep inside XLA with a message that names no argument.
These helpers run on static shapes (and on concrete values where the caller passes
them outside `jit`), so a user sees which argument is wrong and why.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# Set while `checked` traces a function: index checks then become checkify
# checks on traced values too (they cost a reduction per index vector).
_TRACED_CHECKS = contextvars.ContextVar("ssl_jax_traced_checks", default=False)


def check_ndim(name: str, x: Any, ndim: int) -> None:
  """Raises if `x` is not an array of rank `ndim`."""
  shape = np.shape(x)
  if len(shape) != ndim:
    raise ValueError(
        f"`{name}` must be a {ndim}-D array, got shape {tuple(shape)}.")


def concrete(x: Any) -> Optional[np.ndarray]:
  """Returns `x` as a NumPy array if its value is known now, else None (a tracer)."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def check_positive(name: str, value: Any) -> None:
  """Raises if a concrete scalar `value` is not > 0 (traced values pass through)."""
  v = concrete(value)
  if v is not None and not np.all(v > 0):
    raise ValueError(f"`{name}` must be > 0, got {v}.")


def check_in_range(name: str, value: Any, low: float, high: float) -> None:
  """Raises if a concrete scalar `value` is outside [low, high]."""
  v = concrete(value)
  if v is not None and not np.all((v >= low) & (v <= high)):
    raise ValueError(f"`{name}` must be in [{low}, {high}], got {v}.")


def check_indices(name: str, idx: Any, batch: int, n: int) -> None:
  """Raises if `idx` is not a [batch] integer vector with values in [0, n)."""
  check_ndim(name, idx, 1)
  if np.shape(idx)[0] != batch:
    raise ValueError(
        f"`{name}` must have one index per row ({batch}), got shape {np.shape(idx)}.")
  dtype = idx.dtype if hasattr(idx, "dtype") else np.asarray(idx).dtype
  if not np.issubdtype(dtype, np.integer):
    raise ValueError(f"`{name}` must hold integers, got dtype {dtype}.")
  v = concrete(idx)
  if v is not None and v.size and (v.min() < 0 or v.max() >= n):
    raise ValueError(
        f"`{name}` values must be in [0, {n}), got min {v.min()} and max {v.max()}.")
  if v is None and _TRACED_CHECKS.get():
    idx = jnp.asarray(idx)
    checkify.check(jnp.all((idx >= 0) & (idx < n)),
                   f"`{name}` values must be in [0, {n}), got min {{lo}} and max {{hi}}.",
                   lo=jnp.min(idx), hi=jnp.max(idx))


def checked(fn: Callable) -> Callable:
  """`fn` with the checks that `jit` cannot make at trace time turned on.

  Under `jit`, instance indices are tracers, so an index outside [0, N)
  cannot be refused while tracing: `instance_ce` would return NaN,
  `logit_grad` drop the positive and `momentum_update` skip the write. The
  returned function traces `fn` with those checks as `jax.experimental.checkify`
  checks and returns `(error, fn's output)`; `error.throw()` raises a
  ValueError-like `JaxRuntimeError` naming the argument and the bad range.
  It can itself be jitted: `jax.jit(ssl_jax.checked(step))`.
  """
  checked_fn = checkify.checkify(fn, errors=checkify.user_checks)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    token = _TRACED_CHECKS.set(True)
    try:
      return checked_fn(*args, **kwargs)
    finally:
      _TRACED_CHECKS.reset(token)
  return wrapper
