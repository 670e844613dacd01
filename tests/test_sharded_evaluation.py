"""kNN and the linear probe over rows split across devices and processes.

The sharded kNN must give a float64 NumPy reference's predictions, one by
one, on 1 and 4 devices and on 2 processes x 2 devices, with N not a multiple
of the device count and a group of tied rows that k cuts through (the tie
rule decides). The probe on 4 devices and on 2 processes must train the
parameters the 1-device probe trains. No evaluation program may compile its
data in as constants.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssl_jax import evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
# (k, temperature): k = 1, a k that cuts the tie group, large k, k = N.
KNN_SETTINGS = ((1, 0.1), (3, 0.1), (5, 0.07), (60, 1.0), (203, 0.5))
PROBE = dict(num_classes=4, epochs=6, batch_size=64, lr=1e-2)


def tie_features(n: int = 203, dim: int = 8):
  """Training rows [n, dim], labels [n] and queries [39, dim], all small integers.

  Integer entries make every dot product exact in float32, whatever order a
  matrix multiply sums in, so equal similarities are equal bit for bit on any
  device layout and only the tie rule orders them. Rows 150-157 copy row 40
  (labels 1 1 2 2 3 3 4 4; row 40's is 0): a query equal to row 40 has nine
  nearest rows at one similarity, and which of them a k below 9 takes decides
  its vote. With 4 devices (51 rows each) the tied rows sit on devices 0, 2, 3.
  """
  rng = np.random.default_rng(0)
  x = rng.integers(-50, 51, (n, dim)).astype(np.float32)
  y = rng.integers(0, 5, n).astype(np.int32)
  x[150:158] = x[40]
  y[40], y[150:158] = 0, [1, 1, 2, 2, 3, 3, 4, 4]
  queries = np.concatenate([x[[40, 7]], rng.integers(-50, 51, (37, dim)).astype(np.float32)])
  return x, y, queries


def knn_reference(x, y, queries, k, t, num_classes=5):
  """float64; among equal similarities the lower index is nearer (a stable sort), and a
  tie of votes goes to the lower class."""
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  sim = unit(queries.astype(np.float64)) @ unit(x.astype(np.float64)).T
  preds = []
  for row in sim:
    top = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(num_classes)
    np.add.at(votes, y[top], np.exp((row[top] - row[top].max()) / t))
    preds.append(int(np.argmax(votes)))
  return np.asarray(preds)


def blobs(n_train: int = 1001, n_test: int = 300):
  """Four overlapping Gaussian classes in 6-d (the probe gets some wrong): train and test."""
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(4, 6)) * 2.0
  y = rng.integers(0, 4, n_train + n_test).astype(np.int32)
  x = (centres[y] + 1.5 * rng.normal(size=(len(y), 6))).astype(np.float32)
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("num_devices", [1, 4])
def test_the_sharded_knn_gives_the_reference_predictions(num_devices):
  x, y, queries = tie_features()
  rows = evaluate.shard_rows(x, y, local_devices=jax.local_devices()[:num_devices])
  assert rows.rows_per_device == -(-len(x) // num_devices)
  for k, t in KNN_SETTINGS:
    got = evaluate.knn_predict(rows, queries, k=k, temperature=t, batch_size=16)
    np.testing.assert_array_equal(got, knn_reference(x, y, queries, k, t), err_msg=f"k={k}")
  # The tie rule decides: k = 3 takes rows 40, 150, 151 (labels 0, 1, 1). Taking
  # the tied rows from the top (156, 157: label 4) would say 4.
  assert evaluate.knn_predict(rows, queries[:1], k=3)[0] == 1
  assert knn_reference(x, y, queries[:1], 3, 0.1)[0] == 1


def test_bfloat16_features_take_half_the_memory_and_keep_clear_predictions():
  xtr, ytr, xte, yte = blobs()
  f32 = evaluate.shard_rows(xtr, ytr)
  bf16 = evaluate.shard_rows(xtr, ytr, dtype="bfloat16")
  assert bf16.feats.dtype == np.dtype("bfloat16") and bf16.feats.nbytes * 2 == f32.feats.nbytes
  a = evaluate.knn_predict(f32, xte, k=20)
  b = evaluate.knn_predict(bf16, xte, k=20)
  assert np.mean(a == b) >= 0.97 and np.mean(a == yte) > 0.5
  with pytest.raises(ValueError, match="feature_dtype must be one of"):
    evaluate.shard_rows(xtr, ytr, dtype="float16")


def test_the_sharded_probe_trains_the_single_device_probe():
  xtr, ytr, xte, yte = blobs()
  fits = [evaluate.fit_probe(evaluate.shard_rows(xtr, ytr, local_devices=jax.local_devices()[:d]),
                             **PROBE) for d in (1, 4)]
  (p1, m1, s1), (p4, m4, s4) = fits
  np.testing.assert_allclose(m4, xtr.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s4, xtr.std(0) + 1e-6, rtol=1e-5)
  np.testing.assert_allclose(m1, m4, rtol=1e-6, atol=1e-6)
  for key in ("w", "b"):
    np.testing.assert_allclose(p1[key], p4[key], rtol=1e-4, atol=1e-5)
  accuracy = evaluate.linear_probe(evaluate.shard_rows(xtr, ytr), xte, yte, **PROBE)
  assert 0.5 < accuracy < 0.99  # a probe that learned, on classes that overlap


@pytest.mark.slow
def test_two_processes_give_the_same_predictions_and_probe(tmp_path):
  """2 processes x 2 devices, each holding only its rows."""
  from tests.test_multiprocess import _free_port
  port, out = _free_port(), tmp_path / "two.npz"
  procs = []
  for pid in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), SSL_JAX_HEARTBEAT_SECONDS="10")
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.sharded_eval_worker", str(out)],
                                  cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT))
  for p in procs:
    text = p.communicate(timeout=600)[0]
    assert p.returncode == 0, text[-3000:]
  got = np.load(out)
  x, y, queries = tie_features()
  for k, t in KNN_SETTINGS:
    np.testing.assert_array_equal(got[f"knn_{k}_{t}"], knn_reference(x, y, queries, k, t),
                                  err_msg=f"k={k}")
  xtr, ytr, xte, yte = blobs()
  params, mean, _ = evaluate.fit_probe(evaluate.shard_rows(xtr, ytr), **PROBE)
  np.testing.assert_allclose(got["mean"], mean, rtol=1e-6, atol=1e-6)
  for key in ("w", "b"):
    np.testing.assert_allclose(got[key], params[key], rtol=1e-4, atol=1e-5)
  assert float(got["accuracy"]) == pytest.approx(
      evaluate.linear_probe(evaluate.shard_rows(xtr, ytr), xte, yte, **PROBE), abs=1 / len(yte))
  from tests.test_lowshot import LOWSHOT
  few = evaluate.evaluate_lowshot(xtr, ytr, [(0, len(xtr))], xte, yte, LOWSHOT, 4,
                                  log=lambda line: None)
  for name in few:
    np.testing.assert_array_equal(got[f"lowshot_{name}_knn_top1"], few[name]["knn_top1"]["values"])
    np.testing.assert_allclose(got[f"lowshot_{name}_linear_top1"],
                               few[name]["linear_top1"]["values"], atol=1 / len(yte))


def _large_constants(fn, *args) -> list:
  """Constants of `fn`'s jaxpr with over 1,000 elements: arrays it closes over."""
  closed = jax.make_jaxpr(fn)(*args)
  found = [c for c in closed.consts if np.size(c) > 1000]

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", None)
        if inner is not None:
          found.extend(c for c in getattr(param, "consts", ()) if np.size(c) > 1000)
          walk(inner if hasattr(inner, "eqns") else inner.jaxpr)
  walk(closed.jaxpr)
  return found


def test_no_evaluation_program_compiles_its_features_in():
  from ssl_jax.evaluate import knn, linear, rows as rows_lib
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5000, 16)).astype(np.float32)
  rows = evaluate.shard_rows(x, rng.integers(0, 3, 5000))
  q = rng.normal(size=(64, 16)).astype(np.float32)
  args = (rows.feats, rows.labels, rows.start, rows.count, rows.inv_norm)
  assert not _large_constants(knn.knn_program(5, 3, rows.rows_per_device), *args, q,
                              np.float32(0.1))
  assert not _large_constants(rows_lib._inverse_norms, rows.feats, rows.count)
  mean, std = linear.standardization(rows.feats, rows.count)
  assert not _large_constants(linear.standardization, rows.feats, rows.count)
  params = {"w": np.zeros((16, 3), np.float32), "b": np.zeros(3, np.float32)}
  tx, program = linear.probe_program(5000, 256, 1e-3, 0.0, 1)
  carry = jax.tree_util.tree_map(lambda a: np.broadcast_to(a, (4, *np.shape(a))),
                                 (params, tx.init(params)))
  assert not _large_constants(program, *carry,
                              jax.random.PRNGKey(0), *args[:4], mean, std)
  # The check sees a closure: the old probe's epoch closed over its features.
  feats = jax.numpy.asarray(x)
  assert _large_constants(jax.jit(lambda i: feats[i]), 3)
