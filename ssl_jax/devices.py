"""Device placement for the pmapped data axis: one axis name, replicate, prefetch.

Arrays are placed with the same mesh axis name the pmapped step uses, so the
step's inputs and outputs share one sharding and the step compiles once
(flax's `jax_utils.replicate` names its axis differently, which costs a
second compilation on the first step).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from flax import jax_utils

AXIS = "batch"  # the name of the data-parallel axis in every pmap of the project


def _sharding(devices: Sequence[jax.Device]) -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Copies every leaf onto each local device: leaf [...] -> [D, ...].

  With several processes, the copies stay host arrays that pmap places
  itself (its inputs are each process's local slice of the global devices).
  """
  devices = list(devices or jax.local_devices())
  if jax.process_count() > 1:
    return jax.tree_util.tree_map(
        lambda x: np.broadcast_to(np.asarray(jax.device_get(x)), (len(devices), *np.shape(x))),
        tree)
  sharding = _sharding(devices)

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback((len(devices), *x.shape), sharding,
                                        lambda _: x[None])
  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree: Any) -> Any:
  """This process's first replica of every leaf: [D, ...] -> [...] on one device.

  Works for pmap outputs spanning several processes too, where `x[0]` would
  name a replica another process holds.
  """
  def first(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return shard.data[0]
    return x[0]
  return jax.tree_util.tree_map(first, tree)


def local_rows(x: jax.Array) -> np.ndarray:
  """A pmap output [D_global, ...] -> this process's [D_local, ...] rows as NumPy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])
  return np.asarray(x)


def prefetch(batches: Iterable[Any], size: int = 2,
             devices: Optional[Sequence[jax.Device]] = None) -> Iterator[Any]:
  """Sends batches [D, b, ...] to the devices `size` steps ahead of the step.

  With several processes pmap takes each process's host batch directly.
  """
  if jax.process_count() > 1:
    return iter(batches)
  return jax_utils.prefetch_to_device(iter(batches), size, devices=devices, axis_name=AXIS)
