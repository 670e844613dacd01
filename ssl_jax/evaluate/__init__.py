"""Evaluation: the embedding pass, weighted kNN and a linear probe, over every device.

A library: the training loop and the command lines call it. The features of
a split stay split by rows: each process embeds its own rows
(`extract_features`), `shard_rows` puts them on its own devices, and the kNN
(`knn_top1`) and the linear probe (`linear_probe`) run as pmapped programs
over all devices of all processes, each device holding about N / D rows.

The command

    python -m ssl_jax.evaluate --workdir runs/c10

(`ssl_jax/evaluate/__main__.py`) restores the latest checkpoint of the run in
`--workdir` (with the config the run saved there), prints kNN and linear
top-1 (and, with `config.eval.label_fractions` or `shots_per_class`, the
same fit on few labels, `lowshot.py`) and writes `<workdir>/eval.json`.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from ssl_jax.evaluate.features import (extract_features, gather_labels, gather_rows,
                                       make_embed_fn)
from ssl_jax.evaluate.knn import QUERY_BATCH, knn_predict, knn_program, knn_top1
from ssl_jax.evaluate.linear import fit_probe, linear_probe, probe_program, standardization
from ssl_jax.evaluate.lowshot import balanced_subset, evaluate_lowshot, subset_rows
from ssl_jax.evaluate.rows import FEATURE_DTYPES, Rows, shard_rows

__all__ = ["extract_features", "gather_labels", "gather_rows", "make_embed_fn", "QUERY_BATCH",
           "knn_predict", "knn_program", "knn_top1", "fit_probe", "linear_probe",
           "probe_program", "standardization", "FEATURE_DTYPES", "Rows", "shard_rows",
           "evaluate_features", "balanced_subset", "evaluate_lowshot", "subset_rows"]


def evaluate_features(train_h: Rows, train_z: Rows, test_h: np.ndarray, test_z: np.ndarray,
                      test_y: np.ndarray, eval_cfg, num_classes: int, *, linear: bool = True,
                      process_counts: Optional[list[int]] = None,
                      classifier: bool = False) -> dict:
  """kNN on h and on z, and (optionally) the linear probe on h.

  train_*: the training rows on the devices; test_*: this process's test
  rows, with `process_counts` every process's count. classifier: z holds
  class logits (the supervised method's head); adds `classifier_top1`, the
  test top-1 of argmax z[:, :num_classes] (one process).
  """
  knn = functools.partial(knn_top1, k=eval_cfg.knn_k, temperature=eval_cfg.knn_temperature,
                          num_classes=num_classes, process_counts=process_counts)
  out = {"knn_top1": knn(train_h, test_h, test_y),
         "knn_top1_embedding": knn(train_z, test_z, test_y)}
  if linear:
    out["linear_top1"] = linear_probe(
        train_h, test_h, test_y, num_classes=num_classes,
        epochs=eval_cfg.linear_epochs, batch_size=eval_cfg.linear_batch_size,
        lr=eval_cfg.linear_lr, weight_decay=eval_cfg.linear_weight_decay,
        desc="linear probe (epochs)")
  if classifier:
    predicted = np.argmax(np.asarray(test_z)[:, :num_classes], axis=1)
    out["classifier_top1"] = float(np.mean(predicted == np.asarray(test_y)))
  return out
