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
  """Copies every leaf onto each device: leaf [...] -> [D, ...]."""
  devices = list(devices or jax.local_devices())
  sharding = _sharding(devices)

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback((len(devices), *x.shape), sharding,
                                        lambda _: x[None])
  return jax.tree_util.tree_map(put, tree)


def unreplicate(tree: Any) -> Any:
  """Replica 0 of every leaf: [D, ...] -> [...]."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def prefetch(batches: Iterable[Any], size: int = 2,
             devices: Optional[Sequence[jax.Device]] = None) -> Iterator[Any]:
  """Sends batches [D, b, ...] to the devices `size` steps ahead of the step."""
  return jax_utils.prefetch_to_device(iter(batches), size, devices=devices, axis_name=AXIS)
