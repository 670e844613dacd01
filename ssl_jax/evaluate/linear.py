"""A linear probe on frozen features split across every device.

The features stay where `rows.shard_rows` put them: they are arguments of the
pmapped programs, never constants compiled into them. They are standardised
on the devices (mean and standard deviation summed over every device), and
every step draws one global batch from the epoch's permutation of all N
instances; each device contributes the rows of that batch it holds, and the
gradients are summed over devices. The result equals the probe on one
device within float rounding, at N x dim x 4 / D bytes of features per device.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import devices
from ssl_jax.evaluate import features
from ssl_jax.evaluate import rows as rows_lib

# Test rows per host-side prediction batch: bounds the [b, classes] temporaries.
_PREDICT_ROWS = 4096


@functools.partial(jax.pmap, axis_name=devices.AXIS)
def standardization(feats, count):
  """(mean [D, dim], std [D, dim]) of every device's real rows, the same on each device.

  Two passes (the mean, then squared deviations from it), as NumPy's std.
  """
  x = feats.astype(jnp.float32)
  real = (jnp.arange(x.shape[0]) < count)[:, None]
  total = jax.lax.psum(count, devices.AXIS).astype(jnp.float32)
  mean = jax.lax.psum(jnp.sum(jnp.where(real, x, 0.0), 0), devices.AXIS) / total
  var = jax.lax.psum(jnp.sum(jnp.where(real, jnp.square(x - mean), 0.0), 0),
                     devices.AXIS) / total
  return mean, jnp.sqrt(var) + 1e-6


def probe_optimizer(lr: float, weight_decay: float, total_steps: int):
  return optax.adamw(optax.cosine_decay_schedule(lr, total_steps), weight_decay=weight_decay)


@functools.lru_cache(maxsize=None)
def probe_program(num_examples: int, batch_size: int, lr: float, weight_decay: float,
                  epochs: int):
  """(optimizer, the pmapped epoch: (params, opt_state [D, ...], key, feats, labels, start,
  count, mean, std [D, ...]) -> (params, opt_state), replicated).

  One program per probe setting: the arrays are arguments, so a probe at
  another N or dim reuses nothing but also closes over nothing.
  """
  steps = num_examples // batch_size
  tx = probe_optimizer(lr, weight_decay, epochs * steps)

  def epoch(params, opt_state, key, feats, labels, start, count, mean, std):
    n = feats.shape[0]
    order = jax.random.permutation(key, num_examples)[:steps * batch_size]

    def step(carry, ids):
      p, s = carry
      local = ids - start
      real = (local >= 0) & (local < count)
      local = jnp.clip(local, 0, n - 1)
      x = (feats[local].astype(jnp.float32) - mean) / std
      y = jnp.maximum(labels[local], 0)

      def loss_fn(p):  # this device's share of the global batch's mean loss
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y)
        return jnp.sum(jnp.where(real, ce, 0.0)) / batch_size
      grads = jax.lax.psum(jax.grad(loss_fn)(p), devices.AXIS)
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (params, opt_state), order.reshape(steps, batch_size))[0]
  return tx, jax.pmap(epoch, axis_name=devices.AXIS,
                      in_axes=(0, 0, None, 0, 0, 0, 0, 0, 0), donate_argnums=(0, 1))


def fit_probe(rows: rows_lib.Rows, *, num_classes: Optional[int] = None, epochs: int = 100,
              batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 5e-6,
              seed: int = 0, desc: Optional[str] = None) -> tuple[dict, np.ndarray, np.ndarray]:
  """The probe trained on `rows`: (params {"w": [dim, C], "b": [C]}, mean [dim], std [dim]).

  The same on every process and for any number of devices (within float
  rounding). With `desc`, the first process shows a progress bar over the
  epochs once training has taken PROGRESS_DELAY seconds.
  """
  num_classes = int(num_classes or rows.num_classes)
  n, dim = rows.num_examples, int(rows.feats.shape[-1])
  batch_size = min(batch_size, n)
  tx, program = probe_program(n, batch_size, float(lr), float(weight_decay), int(epochs))
  mean, std = standardization(rows.feats, rows.count)
  params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
  carry = devices.replicate((params, tx.init(params)), rows.local_devices)
  progress = features._progress(epochs, desc, (n // batch_size) * batch_size, show_rate=False)
  for done, key in enumerate(jax.random.split(jax.random.PRNGKey(seed), epochs), 1):
    carry = program(*carry, key, rows.feats, rows.labels, rows.start, rows.count, mean, std)
    # One epoch in flight: queued calls whose collectives interleave over the
    # CPU backend's device threads were seen to deadlock (4 fake devices, 2
    # cores); the bar then also shows work done, not work queued.
    jax.block_until_ready(carry)
    progress.update(done)
  return devices.unreplicate((carry[0], mean, std))


def linear_probe(rows: rows_lib.Rows, test_feats: np.ndarray, test_labels: np.ndarray, *,
                 desc: Optional[str] = None, **fit) -> float:
  """Top-1 of a softmax classifier trained (AdamW, cosine) on frozen, standardised features.

  rows: the training features on the devices; test_feats [m, dim],
  test_labels [m]: this process's test rows (all of them with one process);
  the accuracy counts every process's. `fit`: `fit_probe`'s settings
  (num_classes, epochs, batch_size, lr, weight_decay, seed).
  """
  p, m, s = fit_probe(rows, desc=desc, **fit)
  test_feats, test_labels = np.asarray(test_feats, np.float32), np.asarray(test_labels)
  correct = 0
  for i in range(0, len(test_feats), _PREDICT_ROWS):
    logits = ((test_feats[i:i + _PREDICT_ROWS] - m) / s) @ p["w"] + p["b"]
    correct += int(np.sum(np.argmax(logits, axis=1) == test_labels[i:i + _PREDICT_ROWS]))
  mine = np.asarray([[correct, len(test_feats)]], np.int64)
  total = devices.gather_processes(mine, [1] * jax.process_count()).sum(0)
  return float(total[0] / max(total[1], 1))
