"""Labelled feature rows split over every device of every process: what kNN and the probe fit.

Process p holds the contiguous instances [lo_p, hi_p) of a split (its
`data.Layout`); it splits them over its D_local devices in blocks of
n = ceil(max_p (hi_p - lo_p) / D_local) rows, so every device holds n rows
(one shape for the pmapped programs) and the padding is marked by `count`.
A device's memory is about N x dim x itemsize / D bytes; no host or device
holds all N rows.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import devices

FEATURE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Rows:
  """Training rows on the devices of the pmapped axis (global device g of D).

  feats: [D, n, dim] in `feats.dtype` (float32, or bfloat16 to halve them);
  labels: int32 [D, n] (-1 on padding); start: int32 [D], the global index of
  device g's first row (its rows are start[g] + [0, count[g])); count: int32
  [D], its real rows; inv_norm: float32 [D, n], 1 / ||row|| for the cosine
  similarity (0 on padding). num_examples: N; num_classes: 1 + the largest label.
  """
  feats: jax.Array
  labels: jax.Array
  start: jax.Array
  count: jax.Array
  inv_norm: jax.Array
  num_examples: int
  num_classes: int

  @property
  def rows_per_device(self) -> int:
    return int(self.feats.shape[1])

  @property
  def local_devices(self) -> list[jax.Device]:
    """This process's devices holding the rows, in the order of the pmapped axis."""
    return [s.device for s in sorted(self.feats.addressable_shards,
                                     key=lambda s: s.index[0].start or 0)]


@functools.partial(jax.pmap, axis_name=devices.AXIS)
def _inverse_norms(feats, count):
  x = feats.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(x * x, axis=1))
  real = jnp.arange(x.shape[0]) < count
  return jnp.where(real, 1.0 / jnp.maximum(norm, 1e-12), 0.0)


def shard_rows(feats: np.ndarray, labels: np.ndarray,
               bounds: Optional[Sequence[tuple[int, int]]] = None, *,
               dtype: str = "float32",
               local_devices: Optional[Sequence[jax.Device]] = None) -> Rows:
  """This process's rows [n_p, dim] and labels [n_p] -> `Rows` over every device.

  bounds: [lo_p, hi_p) of every process (process_index's are the rows given);
  default: one process holding all rows. Every process calls this together.
  """
  if dtype not in FEATURE_DTYPES:
    raise ValueError(f"config.eval.feature_dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
  feats, labels = np.asarray(feats), np.asarray(labels, np.int32)
  bounds = list(bounds or [(0, len(feats))])
  lo, hi = bounds[jax.process_index() if len(bounds) > 1 else 0]
  if hi - lo != len(feats) or len(labels) != len(feats):
    raise ValueError(f"{len(feats)} feature rows and {len(labels)} labels for instances "
                     f"[{lo}, {hi})")
  local = list(local_devices or jax.local_devices())
  d_local = len(local)
  n = max(1, -(-max(b - a for a, b in bounds) // d_local))
  padded = np.zeros((d_local * n, feats.shape[1]), jnp.dtype(dtype))
  padded[:len(feats)] = feats
  padded_labels = np.full(d_local * n, -1, np.int32)
  padded_labels[:len(labels)] = labels
  first = np.arange(d_local) * n
  count = np.clip(len(feats) - first, 0, n).astype(np.int32)
  put = lambda x: devices.place(x, local)
  feats_dev = put(padded.reshape(d_local, n, -1))
  count_dev = put(count)
  largest = np.asarray([labels.max(initial=-1)], np.int32)
  num_classes = 1 + int(devices.gather_processes(largest, [1] * jax.process_count()).max())
  return Rows(feats=feats_dev, labels=put(padded_labels.reshape(d_local, n)),
              start=put((lo + first).astype(np.int32)), count=count_dev,
              inv_norm=_inverse_norms(feats_dev, count_dev),
              num_examples=bounds[-1][1] - bounds[0][0], num_classes=num_classes)
