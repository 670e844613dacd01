"""The embedding pass: a network's features of every row of a split, this process's rows.

Each process embeds only the rows it holds and keeps them (nothing is
gathered here): the kNN and the linear probe place them on the process's own
devices (`ssl_jax.evaluate.rows`), so no host and no device ever holds the
whole training split's features.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ssl_jax import augment
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import reporting


def make_embed_fn(model, aug_cfg: augment.AugmentConfig, *, batch_norm: str = "inference"):
  """pmapped (variables, uint8 images [D, b, H, W, 3], mask [D, b]) -> (h [D, b, D_h], z [D, b, d]).

  batch_norm="inference" uses the running statistics; "batch" normalises with
  the statistics of the batch (used to calibrate the bank of an untrained
  network, whose running statistics are still the initial 0 and 1): of its
  real rows only (`mask` True), over every device, so padding changes no
  real row's output.
  """
  def embed(variables, images, mask):
    x = augment.preprocess_eval(images, aug_cfg)
    if batch_norm == "batch":
      with nn.intercept_methods(_batch_statistics_of_real_rows(mask)):
        (h, z), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      h, z = model.apply(variables, x, train=False)
    return h, z
  return jax.pmap(embed, axis_name=devices.AXIS)


def _batch_statistics_of_real_rows(mask: jax.Array):
  """A flax method interceptor: every BatchNorm normalises with its input's statistics
  over the rows where `mask` [b] is True, on every device of the pmapped axis.

  Why not BatchNorm's own `mask`: flax averages the devices' masked means with
  equal weights (`lax.pmean`), so a device holding 3 real rows weighs as much
  as one holding 300, and a device holding none gives NaN. Here the sums and
  the counts are summed over devices (`lax.psum`) before dividing. Mean and
  variance are computed as flax computes them (float32, E[x^2] - E[x]^2
  clipped at 0) and applied in its order. A step without padding keeps
  flax's own output bit for bit (both are computed: the normalisation, not
  the convolutions, runs twice), so an unpadded pass gives the same bank as
  before. The running statistics are discarded by the caller.
  """
  weights = mask.astype(jnp.float32)
  unpadded = jax.lax.psum(jnp.sum(weights), devices.AXIS) == jax.lax.psum(
      jnp.float32(weights.size), devices.AXIS)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.BatchNorm) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    x = args[0]
    axes = tuple(range(x.ndim - 1))          # every axis but the features'
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
    per_row = float(np.prod(x.shape[1:-1]))  # spatial positions per image
    count = jax.lax.psum(jnp.sum(weights) * per_row, devices.AXIS)
    sums = jax.lax.psum(jnp.stack([jnp.sum(x32 * w, axes), jnp.sum(x32 * x32 * w, axes)]),
                        devices.AXIS)
    mean, mean_sq = sums[0] / count, sums[1] / count
    var = jnp.maximum(0.0, mean_sq - mean * mean)
    y = x - mean
    mul = jax.lax.rsqrt(var + module.epsilon)
    args_dtypes = [x]
    if module.use_scale:
      scale = module.get_variable("params", "scale")
      mul = mul * scale
      args_dtypes.append(scale)
    y = y * mul
    if module.use_bias:
      bias = module.get_variable("params", "bias")
      y = y + bias
      args_dtypes.append(bias)
    dtype = module.dtype if module.dtype is not None else jnp.result_type(*args_dtypes)
    return jnp.where(unpadded, next_fun(*args, **kwargs), jnp.asarray(y, dtype))
  return interceptor


# Seconds before an evaluation pass shows a progress bar: a pass over a small
# split ends sooner and leaves no lines in the log.
PROGRESS_DELAY = 5.0


def _progress(total: int, desc: Optional[str], images_per_step: int,
              show_rate: bool = True) -> reporting.Progress:
  """A bar on the first process, drawn after PROGRESS_DELAY seconds; none without `desc`."""
  return reporting.Progress(total, desc or "", images_per_step,
                            enabled=desc is not None and jax.process_index() == 0,
                            delay=PROGRESS_DELAY, show_rate=show_rate)


def extract_features(p_embed: Callable, variables, split: data_lib.Split, *,
                     batch_size: int, num_devices: int, desc: Optional[str] = None,
                     keep: Sequence[str] = ("h", "z")) -> tuple[np.ndarray, ...]:
  """This process's rows of the backbone features h [n, D_h] and embeddings z [n, d].

  Rows in index order: row r is instance `split.offset + r`, as in
  `split.labels`. `keep` names the outputs returned, in its order; the others
  never leave the devices (the bank's calibration keeps only "z", not the
  2048-d h of a ResNet-50). With `desc`, the first process shows a progress
  bar once the pass has taken PROGRESS_DELAY seconds.
  """
  lo, hi = split.layout.local_bounds
  which = [("h", "z").index(name) for name in keep]
  out: list = [None] * len(which)
  total = data_lib.num_eval_batches(split, batch_size=batch_size, num_local_devices=num_devices)
  progress = _progress(total, desc, -(-split.num_examples // max(total, 1)))
  batches = data_lib.eval_batches(split, batch_size=batch_size, num_local_devices=num_devices)
  for done, batch in enumerate(batches, 1):
    outputs = p_embed(variables, batch["image"], batch["mask"])
    mask = batch["mask"].reshape(-1)
    rows = batch["index"].reshape(-1)[mask] - lo
    for slot, i in enumerate(which):
      x = devices.local_rows(outputs[i]).reshape(mask.size, -1)[mask]
      if out[slot] is None:
        out[slot] = np.zeros((hi - lo, x.shape[1]), x.dtype)
      out[slot][rows] = x
    progress.update(done)
  split.passes += 1
  return tuple(out)


def gather_rows(x: np.ndarray, split: data_lib.Split) -> np.ndarray:
  """Every process's rows of `x` (this process's rows of `split`), in index order.

  For the test split's features (the kNN's queries, which every device
  needs) and for the bank's d-dim rows; never for training features.
  """
  return devices.gather_processes(x, _process_counts(split))


def gather_labels(split: data_lib.Split) -> np.ndarray:
  """The labels [N] of the whole split, from every process's rows."""
  return gather_rows(split.labels, split)


def _process_counts(split: data_lib.Split) -> list[int]:
  return [hi - lo for lo, hi in map(split.layout.process_bounds,
                                    range(split.layout.process_count))]
