"""Weighted kNN (NPID's protocol) over training rows split across every device.

For each batch of queries every device computes the cosine similarities to
its own rows and their top k; the [Q, k x D] candidates of all devices are
gathered and merged into the global top k, which vote with weights
exp(s / T). No device holds more than its N / D rows and a [Q, N / D] block
of similarities.

Tie rule: among equal similarities the row with the lower instance index is
nearer (as `lax.top_k` over all N rows, and a stable sort, order them), so
the predictions do not depend on how many devices hold the rows; a tie of
votes goes to the lower class index (`argmax`). "Equal" is as computed: a
matrix multiply may sum a dot product in another order for another row
position or block size, so two rows whose float32 similarities are within
rounding of each other (duplicates of non-integer features included) may be
ordered differently on another device layout, as they may on one device.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ssl_jax import devices
from ssl_jax.evaluate import rows as rows_lib

# Queries per program call. Each device holds a [QUERY_BATCH, N / D] float32
# block of similarities: 0.31 GiB at ImageNet size on 8 devices, beside its
# 1.22 GiB of 2048-d features.
QUERY_BATCH = 512


@functools.lru_cache(maxsize=None)
def knn_program(k: int, num_classes: int, rows_per_device: int):
  """The pmapped kNN: (feats, labels, start, count, inv_norm [D, ...] of `Rows`, unit
  queries [Q, dim] and the temperature, both the same on every device) -> [D, Q] classes.

  One program per (k, classes, rows per device): the caller pads the last query
  batch, so a whole evaluation compiles it once.
  """
  k_local = min(k, rows_per_device)

  def predict(feats, labels, start, count, inv_norm, queries, temperature):
    sim = jnp.dot(queries.astype(feats.dtype), feats.T,
                  preferred_element_type=jnp.float32) * inv_norm         # [Q, n]
    sim = jnp.where(jnp.arange(feats.shape[0]) < count, sim, -jnp.inf)
    top_sim, top_row = jax.lax.top_k(sim, k_local)                       # [Q, k_local]
    candidates = [jax.lax.all_gather(c, devices.AXIS, axis=1, tiled=True)
                  for c in (top_sim, start + top_row, labels[top_row])]  # [Q, k_local * D]
    neg_sim, _, label = jax.lax.sort((-candidates[0], candidates[1], candidates[2]),
                                     dimension=1, num_keys=2)
    top_sim, label = -neg_sim[:, :k], label[:, :k]
    # Weights exp(s / T) scaled by exp(-max s / T) so a low temperature cannot
    # overflow float32 (a common factor: the vote is unchanged).
    weights = jnp.exp((top_sim - top_sim[:, :1]) / temperature)
    votes = jax.nn.one_hot(label, num_classes)                           # [Q, k, C]
    return jnp.argmax(jnp.sum(weights[..., None] * votes, axis=1), axis=-1)
  return jax.pmap(predict, axis_name=devices.AXIS, in_axes=(0, 0, 0, 0, 0, None, None))


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(rows: rows_lib.Rows, queries: np.ndarray, *, k: int = 200,
                temperature: float = 0.1, batch_size: int = QUERY_BATCH,
                num_classes: Optional[int] = None) -> np.ndarray:
  """The predicted class [M] of each query [M, dim] (the same queries on every process)."""
  num_classes = int(num_classes or rows.num_classes)
  k = int(min(k, rows.num_examples))
  program = knn_program(k, num_classes, rows.rows_per_device)
  q = _unit(np.asarray(queries, np.float32))
  b = max(1, min(batch_size, len(q)))
  preds = []
  for first in range(0, len(q), b):
    chunk = np.zeros((b, q.shape[1]), np.float32)   # padded: one shape, one compile
    real = len(q[first:first + b])
    chunk[:real] = q[first:first + b]
    out = program(rows.feats, rows.labels, rows.start, rows.count, rows.inv_norm, chunk,
                  np.float32(temperature))
    preds.append(devices.unreplicate(out)[:real])
  return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def knn_top1(rows: rows_lib.Rows, test_feats: np.ndarray, test_labels: np.ndarray, *,
             k: int = 200, temperature: float = 0.1, batch_size: int = QUERY_BATCH,
             num_classes: Optional[int] = None,
             process_counts: Optional[list[int]] = None) -> float:
  """Weighted kNN top-1 (cosine similarity, votes exp(sim / temperature)), in [0, 1].

  test_feats [m, dim], test_labels [m]: this process's test rows, with
  `process_counts` every process's row count (default: one process). The
  queries are gathered, as every device needs them; the training rows never are.
  """
  counts = process_counts or [len(test_feats)]
  queries = devices.gather_processes(np.asarray(test_feats, np.float32), counts)
  labels = devices.gather_processes(np.asarray(test_labels), counts)
  pred = knn_predict(rows, queries, k=k, temperature=temperature, batch_size=batch_size,
                     num_classes=num_classes)
  return float(np.mean(pred == labels)) if len(labels) else 0.0
