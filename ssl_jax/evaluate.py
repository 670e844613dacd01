"""Evaluation: feature extraction, weighted kNN and a linear probe on frozen features.

A library: the training loop and the command lines call it. The command

    python -m ssl_jax.evaluate --workdir runs/c10

(`ssl_jax.cli.evaluate_command`) restores the latest checkpoint of the run in
`--workdir` (with the config the run saved there), prints kNN and linear
top-1 and writes `<workdir>/eval.json`.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
                     batch_size: int, num_devices: int,
                     desc: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """Backbone features h [N, D_h] and embeddings z [N, d] of a whole split, in index order.

  Each process embeds only its own rows of the split; the rows of every
  process are then gathered, so every process returns all N. With `desc`,
  the first process shows a progress bar once the pass has taken
  PROGRESS_DELAY seconds.
  """
  lo, hi = split.layout.local_bounds
  hs = zs = None
  total = data_lib.num_eval_batches(split, batch_size=batch_size, num_local_devices=num_devices)
  progress = _progress(total, desc, -(-split.num_examples // max(total, 1)))
  batches = data_lib.eval_batches(split, batch_size=batch_size, num_local_devices=num_devices)
  for done, batch in enumerate(batches, 1):
    h, z = p_embed(variables, batch["image"], batch["mask"])
    mask = batch["mask"].reshape(-1)
    rows = batch["index"].reshape(-1)[mask] - lo
    h = devices.local_rows(h).reshape(mask.size, -1)[mask]
    z = devices.local_rows(z).reshape(mask.size, -1)[mask]
    if hs is None:
      hs = np.zeros((hi - lo, h.shape[1]), h.dtype)
      zs = np.zeros((hi - lo, z.shape[1]), z.dtype)
    hs[rows], zs[rows] = h, z
    progress.update(done)
  counts = _process_counts(split)
  return devices.gather_processes(hs, counts), devices.gather_processes(zs, counts)


def gather_labels(split: data_lib.Split) -> np.ndarray:
  """The labels [N] of the whole split, from every process's rows."""
  return devices.gather_processes(split.labels, _process_counts(split))


def _process_counts(split: data_lib.Split) -> list[int]:
  return [hi - lo for lo, hi in map(split.layout.process_bounds,
                                    range(split.layout.process_count))]


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_predict(train_feats, train_labels, test_feats, *, k: int, temperature: float,
                 num_classes: int):
  # [b, D] x [N, D]^T -> [b, N] cosine similarities (rows are unit-norm).
  sim = test_feats @ train_feats.T
  top_sim, top_idx = jax.lax.top_k(sim, k)                    # [b, k]
  # NPID's vote weights exp(s / T), scaled by exp(-max s / T) so a low temperature
  # cannot overflow float32 (a common factor: the vote is unchanged).
  weights = jnp.exp((top_sim - top_sim[:, :1]) / temperature)
  votes = jax.nn.one_hot(train_labels[top_idx], num_classes)  # [b, k, C]
  return jnp.argmax(jnp.sum(weights[..., None] * votes, axis=1), axis=-1)


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_top1(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
             test_labels: np.ndarray, *, k: int = 200, temperature: float = 0.1,
             batch_size: int = 1024, num_classes: Optional[int] = None) -> float:
  """Weighted kNN top-1 (cosine similarity, votes exp(sim / temperature)), in [0, 1].

  Runs on the default device in test batches; features are L2-normalised here.
  """
  num_classes = int(num_classes or max(train_labels.max(), test_labels.max()) + 1)
  k = int(min(k, len(train_feats)))
  train = jnp.asarray(_unit(train_feats), jnp.float32)
  labels = jnp.asarray(train_labels, jnp.int32)
  test = _unit(test_feats).astype(np.float32)
  correct = 0
  for start in range(0, len(test), batch_size):
    pred = _knn_predict(train, labels, jnp.asarray(test[start:start + batch_size]), k=k,
                        temperature=float(temperature), num_classes=num_classes)
    correct += int(np.sum(np.asarray(pred) == test_labels[start:start + batch_size]))
  return correct / len(test)


def linear_probe(train_feats: np.ndarray, train_labels: np.ndarray, test_feats: np.ndarray,
                 test_labels: np.ndarray, *, num_classes: int, epochs: int = 100,
                 batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 5e-6,
                 seed: int = 0, desc: Optional[str] = None) -> float:
  """Top-1 of a softmax classifier trained (AdamW, cosine) on frozen, standardised features.

  With `desc`, the first process shows a progress bar over the epochs once
  training has taken PROGRESS_DELAY seconds.
  """
  mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
  xtr = jnp.asarray((train_feats - mean) / std, jnp.float32)
  xte = jnp.asarray((test_feats - mean) / std, jnp.float32)
  ytr = jnp.asarray(train_labels, jnp.int32)
  n, dim = xtr.shape
  batch_size = min(batch_size, n)
  steps = n // batch_size
  tx = optax.adamw(optax.cosine_decay_schedule(lr, epochs * steps), weight_decay=weight_decay)
  params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()

  @jax.jit
  def epoch(carry, key):
    perm = jax.random.permutation(key, n)[:steps * batch_size].reshape(steps, batch_size)

    def step(carry, ids):
      p, s = carry
      g = jax.grad(loss_fn)(p, xtr[ids], ytr[ids])
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(step, carry, perm)[0]

  carry = (params, opt_state)
  progress = _progress(epochs, desc, steps * batch_size, show_rate=False)
  for done, key in enumerate(jax.random.split(jax.random.PRNGKey(seed), epochs), 1):
    carry = epoch(carry, key)
    if progress.enabled:
      jax.block_until_ready(carry)  # so the bar shows work done, not work queued
      progress.update(done)
  params = carry[0]
  pred = np.asarray(jnp.argmax(xte @ params["w"] + params["b"], axis=-1))
  return float(np.mean(pred == test_labels))


def evaluate_features(train_h, train_z, train_y, test_h, test_z, test_y, eval_cfg,
                      num_classes: int, *, linear: bool = True) -> dict:
  """kNN on h and on z, and (optionally) the linear probe on h."""
  knn = functools.partial(knn_top1, k=eval_cfg.knn_k, temperature=eval_cfg.knn_temperature,
                          num_classes=num_classes)
  out = {"knn_top1": knn(train_h, train_y, test_h, test_y),
         "knn_top1_embedding": knn(train_z, train_y, test_z, test_y)}
  if linear:
    out["linear_top1"] = linear_probe(
        train_h, train_y, test_h, test_y, num_classes=num_classes,
        epochs=eval_cfg.linear_epochs, batch_size=eval_cfg.linear_batch_size,
        lr=eval_cfg.linear_lr, weight_decay=eval_cfg.linear_weight_decay,
        desc="linear probe (epochs)")
  return out


if __name__ == "__main__":
  # The command line lives with the shell (ssl_jax/cli.py); this module is a library.
  from ssl_jax import cli
  cli.evaluate_command()
