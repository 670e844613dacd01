"""Evaluation with few labels: kNN and the linear probe fit on class-balanced subsets.

`config.eval.label_fractions` (e.g. (0.01, 0.1)) and `config.eval.shots_per_class`
(e.g. (1, 5, 10)) name the settings; each is drawn with `config.eval.lowshot_seeds`
seeds (0, 1, ...) and reported as the mean and spread over them. The test set is
always the whole test split.

A subset takes the same number of training rows from every class: `shots`, or
round(fraction x N / C) for a label fraction (at least 1), all of a class's
rows where it has fewer. For one seed the subsets are nested, across fractions
and shots alike: class c's rows are taken in the order of one permutation keyed
by (seed, c), so the 1% subset is the first rows of the 10% one. The draw sees
only the labels of the whole split, so it is the same for any process or device
count.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from ssl_jax import devices
from ssl_jax.data import balanced_subset, labels_per_class
from ssl_jax.evaluate.knn import knn_top1
from ssl_jax.evaluate.linear import linear_probe
from ssl_jax.evaluate.rows import Rows, shard_rows


def configured(eval_cfg) -> bool:
  """Whether config.eval asks for any few-label setting."""
  return bool(tuple(eval_cfg.get("label_fractions", ())) or
              tuple(eval_cfg.get("shots_per_class", ())))


def settings(eval_cfg, labels: np.ndarray) -> list[tuple[str, int]]:
  """(name, rows per class) of every configured setting: 'labels_1%', 'shots_5', ..."""
  num_classes = max(len(np.unique(labels)), 1)
  out = []
  for fraction in eval_cfg.get("label_fractions", ()):
    per_class = labels_per_class(fraction, len(labels), num_classes)
    out.append((f"labels_{100 * float(fraction):g}%", per_class))
  for shots in eval_cfg.get("shots_per_class", ()):
    out.append((f"shots_{int(shots)}", int(shots)))
  return out


def check_config(eval_cfg) -> Optional[str]:
  """Why the few-label settings are invalid (a message naming the field), or None."""
  fractions = tuple(eval_cfg.get("label_fractions", ()))
  if any(not 0 < float(f) <= 1 for f in fractions):
    return f"config.eval.label_fractions must lie in (0, 1], got {fractions}."
  shots = tuple(eval_cfg.get("shots_per_class", ()))
  if any(int(s) != s or s < 1 for s in shots):
    return f"config.eval.shots_per_class must be positive integers, got {shots}."
  if configured(eval_cfg) and int(eval_cfg.get("lowshot_seeds", 3)) < 1:
    return f"config.eval.lowshot_seeds must be >= 1, got {eval_cfg.lowshot_seeds}."
  return None


def subset_rows(feats: np.ndarray, labels: np.ndarray, bounds: Sequence[tuple[int, int]],
                subset: np.ndarray, dtype: str = "float32") -> Rows:
  """`Rows` of the global instances `subset`, from this process's rows [lo, hi) of the split.

  feats [hi - lo, dim], labels [hi - lo]: this process's rows; bounds: every
  process's [lo, hi). Each process keeps its own subset rows, renumbered so
  that the subset's instances are contiguous per process.
  """
  multi = len(bounds) > 1
  counts = [int(np.sum((subset >= lo) & (subset < hi))) for lo, hi in bounds]
  starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
  lo, hi = bounds[jax.process_index() if multi else 0]
  mine = subset[(subset >= lo) & (subset < hi)] - lo
  new_bounds = list(zip(starts[:-1], starts[1:]))
  return shard_rows(feats[mine], labels[mine], new_bounds if multi else None, dtype=dtype)


def evaluate_lowshot(train_h: np.ndarray, train_labels: np.ndarray,
                     bounds: Sequence[tuple[int, int]], test_h: np.ndarray, test_y: np.ndarray,
                     eval_cfg, num_classes: int, *, process_counts: Optional[list[int]] = None,
                     log=print) -> dict:
  """{setting: {per_class, num_labels, knn_top1, linear_top1}} over `lowshot_seeds` seeds.

  train_h [n_p, D], train_labels [n_p]: this process's training rows (instances
  [lo, hi) of `bounds`); test_h, test_y: its test rows (`process_counts` every
  process's count). Each accuracy is {mean, std, values}; every process
  returns the same.
  """
  all_labels = devices.gather_processes(np.asarray(train_labels), [b - a for a, b in bounds])
  seeds = range(int(eval_cfg.get("lowshot_seeds", 3)))
  dtype = eval_cfg.get("feature_dtype", "float32")
  out = {}
  for name, per_class in settings(eval_cfg, all_labels):
    knn, linear = [], []
    for seed in seeds:
      subset = balanced_subset(all_labels, per_class, seed)
      rows = subset_rows(train_h, train_labels, bounds, subset, dtype)
      knn.append(knn_top1(rows, test_h, test_y, k=eval_cfg.knn_k,
                          temperature=eval_cfg.knn_temperature, num_classes=num_classes,
                          process_counts=process_counts))
      linear.append(linear_probe(rows, test_h, test_y, num_classes=num_classes,
                                 epochs=eval_cfg.linear_epochs,
                                 batch_size=eval_cfg.linear_batch_size, lr=eval_cfg.linear_lr,
                                 weight_decay=eval_cfg.linear_weight_decay, seed=seed))
      del rows
    out[name] = {"per_class": per_class, "num_labels": int(len(subset)),
                 "knn_top1": _stat(knn), "linear_top1": _stat(linear)}
    log(f"few labels, {name} ({per_class} per class, {len(subset)} in all, "
        f"{len(knn)} seeds): kNN top-1 {_pct(knn)}, linear top-1 {_pct(linear)}")
  return out


def _stat(values: list[float]) -> dict:
  return {"mean": float(np.mean(values)), "std": float(np.std(values)),
          "values": [float(v) for v in values]}


def _pct(values: list[float]) -> str:
  return f"{100 * np.mean(values):.2f}% ± {100 * np.std(values):.2f}"
