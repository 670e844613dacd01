"""One process of a multi-process evaluation (tests/test_sharded_evaluation.py).

    python -m tests.sharded_eval_worker OUT.npz   (JAX_COORDINATOR_ADDRESS etc. set)

Holds only its own rows of the shared features (`data.Layout`), places them
over its devices and runs the sharded kNN and probe; process 0 writes the
predictions and the probe's parameters.
"""

import sys

import jax
import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import distributed
from ssl_jax import evaluate
from tests.test_sharded_evaluation import KNN_SETTINGS, PROBE, blobs, tie_features
from tests.test_lowshot import LOWSHOT


def main(out: str) -> None:
  distributed.initialize()
  count = jax.process_count()
  layouts = lambda n: [data_lib.Layout(n, num_shards=count, process_index=p, process_count=count)
                       for p in range(count)]
  x, y, queries = tie_features()
  bounds = [l.local_bounds for l in layouts(len(x))]
  lo, hi = bounds[jax.process_index()]
  rows = evaluate.shard_rows(x[lo:hi], y[lo:hi], bounds)
  result = {f"knn_{k}_{t}": evaluate.knn_predict(rows, queries, k=k, temperature=t,
                                                 batch_size=16)
            for k, t in KNN_SETTINGS}
  xtr, ytr, xte, yte = blobs()
  bounds = [l.local_bounds for l in layouts(len(xtr))]
  lo, hi = bounds[jax.process_index()]
  train = evaluate.shard_rows(xtr[lo:hi], ytr[lo:hi], bounds)
  params, mean, std = evaluate.fit_probe(train, **PROBE)
  test_lo, test_hi = layouts(len(xte))[jax.process_index()].local_bounds
  accuracy = evaluate.linear_probe(train, xte[test_lo:test_hi], yte[test_lo:test_hi], **PROBE)
  # Few labels: each process holds its own rows of every subset.
  counts = [b - a for a, b in (l.local_bounds for l in layouts(len(xte)))]
  few = evaluate.evaluate_lowshot(xtr[lo:hi], ytr[lo:hi], bounds, xte[test_lo:test_hi],
                                  yte[test_lo:test_hi], LOWSHOT, 4, process_counts=counts,
                                  log=lambda line: None)
  result.update({f"lowshot_{name}_{m}": few[name][m]["values"] for name in few
                 for m in ("knn_top1", "linear_top1")})
  if jax.process_index() == 0:
    np.savez(out, w=params["w"], b=params["b"], mean=mean, std=std, accuracy=accuracy,
             **result)
  distributed.finish()


if __name__ == "__main__":
  main(sys.argv[1])
