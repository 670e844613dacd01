"""Every bank-transition variant against a float64 gradient step, and kNN predictions
element by element against a NumPy reference on cases where k, T and ties matter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax import bank_objective
from ssl_jax import devices as devices_lib
from ssl_jax import evaluate
from ssl_jax import sharded_bank

D = 4
AXIS = devices_lib.AXIS


def _problem(seed=0, b=6, n=40, d=8):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  return (unit(rng.normal(size=(b, d))), unit(rng.normal(size=(n, d))),
          rng.choice(n, size=b, replace=False).astype(np.int32))


def _expected(z, bank, idx, cfg):
  """normalize(V - lr * grad_V L(V)) in float64, L the batch mean of the objective."""
  with jax.enable_x64(True):
    z64, v64 = jnp.asarray(z, jnp.float64), jnp.asarray(bank, jnp.float64)

    def loss(v):
      s = z64 @ v.T / cfg.temperature
      return bank_objective.loss_from_logits(s, jnp.asarray(idx), cfg)[0]

    new = v64 - cfg.bank_lr * jax.grad(loss)(v64)
    return np.asarray(new / jnp.linalg.norm(new, axis=1, keepdims=True))


VARIANTS = [dict(kl_weight=w, kl_direction=direction, kl_stop_gradient=sg)
            for w in (0.0, 1.0, 2.5) for direction in ("q_p", "p_q") for sg in (True, False)]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_every_bank_transition_is_a_float64_gradient_step(variant):
  z, bank, idx = _problem()
  cfg = bank_objective.BankMethodConfig(temperature=0.1, update="grad", bank_lr=4.0, **variant)
  expected = _expected(z, bank, idx, cfg)
  assert np.abs(expected - bank).max() > 1e-2  # the step moves the bank
  z32, bank32 = z.astype(np.float32), bank.astype(np.float32)
  s = z32 @ bank32.T / cfg.temperature
  got = bank_objective.bank_transition(bank32, z32, s, idx, cfg, None)
  np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)
  if cfg.closed_form:
    fused = bank_objective.fused_loss_and_transition(
        z32, bank32, idx, dataclasses.replace(cfg, fused=True), None)[2]
    np.testing.assert_allclose(fused, expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("kl_weight", [0.0, 1.0, 2.5])
def test_the_sharded_transition_is_the_gradient_step_of_the_global_batch(kl_weight):
  assert jax.local_device_count() == D
  z, bank, idx = _problem(1, b=2 * D, n=37)
  cfg = bank_objective.BankMethodConfig(temperature=0.1, update="grad", bank_lr=4.0,
                                        kl_weight=kl_weight, sharded=True, num_examples=37)
  expected = _expected(z, bank, idx, cfg)
  fn = lambda z, shard, idx: sharded_bank.loss_and_transition(
      z, shard, idx, cfg, num_examples=37, axis_name=AXIS)
  out = jax.pmap(fn, axis_name=AXIS)(z.astype(np.float32).reshape(D, 2, -1),
                                    sharded_bank.split_bank(bank.astype(np.float32), D),
                                    idx.reshape(D, 2))
  got = sharded_bank.join_bank(np.asarray(out[-1]).reshape(-1, bank.shape[1]), 37)
  np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def _knn_reference(train, labels, test, k, temperature, num_classes):
  """Weighted vote of the k most similar rows (weights exp(s / T)); ties: lowest class."""
  preds = []
  for row in (test.astype(np.float64) @ train.astype(np.float64).T):
    top = np.argsort(-row, kind="stable")[:k]
    votes = np.zeros(num_classes)
    np.add.at(votes, labels[top], np.exp(row[top] / temperature))
    preds.append(int(np.argmax(votes)))
  return np.asarray(preds)


def _points(angles):
  return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


@pytest.mark.parametrize("k, temperature, expected", [
    (1, 0.1, 0),      # the single nearest row is class 0
    (4, 1.0, 1),      # three farther rows of class 1 outvote it
    (4, 0.01, 0),     # a low temperature lets the nearest row dominate (exp(s / T) > 1e38)
    (8, 1.0, 2),      # k = N: class 2's four rows, the farthest, win
])
def test_knn_predictions_match_the_reference_where_k_and_temperature_decide(
    k, temperature, expected):
  # The query at angle 0; class 0 at 0.1, class 1 at 0.3 (x3), class 2 at 0.35 (x3) and 0.5.
  train = _points(np.array([0.1, 0.3, 0.3, 0.3, 0.35, 0.35, 0.35, 0.5]))
  labels = np.array([0, 1, 1, 1, 2, 2, 2, 2], np.int32)
  test = _points(np.array([0.0]))
  got = np.asarray(evaluate.knn_predict(evaluate.shard_rows(train, labels), test, k=k,
                                        temperature=temperature, num_classes=3))
  ref = _knn_reference(train, labels, test, k, temperature, 3)
  assert got.tolist() == ref.tolist() == [expected]


def test_knn_predictions_match_the_reference_element_by_element_with_ties():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(60, 5)).astype(np.float32)
  train /= np.linalg.norm(train, axis=1, keepdims=True)
  test = np.concatenate([train[:10], rng.normal(size=(30, 5)).astype(np.float32)])
  test /= np.linalg.norm(test, axis=1, keepdims=True)
  labels = rng.integers(0, 4, 60).astype(np.int32)
  for k, t in ((1, 0.1), (5, 0.07), (20, 0.5), (60, 1.0)):
    got = np.asarray(evaluate.knn_predict(evaluate.shard_rows(train, labels), test, k=k,
                                          temperature=t, num_classes=4))
    np.testing.assert_array_equal(got, _knn_reference(train, labels, test, k, t, 4))
  # A tie of votes goes to the lowest class index, in both.
  tie = _points(np.array([0.2, -0.2]))
  got = evaluate.knn_predict(evaluate.shard_rows(tie, np.array([3, 1], np.int32)),
                             _points(np.array([0.0])), k=2, temperature=0.1, num_classes=4)
  assert int(got[0]) == 1


def test_knn_votes_do_not_overflow_at_a_low_temperature():
  # Three class-0 rows at angle 0.1, one class-1 row nearer at 0.05: at T = 0.003 the
  # nearer row outweighs the three (by exp(1.2) > 3), though every exp(s / T) > 1e125.
  train = _points(np.array([0.1, 0.1, 0.1, 0.05]))
  labels = np.array([0, 0, 0, 1], np.int32)
  test = _points(np.array([0.0]))
  assert _knn_reference(train, labels, test, 4, 0.003, 2).tolist() == [1]
  got = evaluate.knn_predict(evaluate.shard_rows(train, labels), test, k=4, temperature=0.003,
                             num_classes=2)
  assert int(got[0]) == 1


def _softmax_regression(x, y, num_classes, steps=3000, lr=0.5):
  """The reference solver: full-batch gradient descent on the mean softmax cross-entropy
  of standardised features (float64), to convergence."""
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = (x - mean) / std
  w, b = np.zeros((x.shape[1], num_classes)), np.zeros(num_classes)
  onehot = np.eye(num_classes)[y]
  for _ in range(steps):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    w -= lr * x.T @ (p - onehot) / len(x)
    b -= lr * (p - onehot).mean(0)
  return lambda t: np.argmax(((t - mean) / std) @ w + b, axis=1)


def test_the_linear_probe_agrees_with_a_reference_solver():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 6)) * 3.0
  def blobs(n, spread):
    y = rng.integers(0, 4, n)
    return centres[y] + spread * rng.normal(size=(n, 6)), y
  # Separable: both classify every test point right.
  xtr, ytr = blobs(1024, 0.3)
  xte, yte = blobs(200, 0.3)
  assert evaluate.linear_probe(evaluate.shard_rows(xtr, ytr), xte, yte, num_classes=4, epochs=50,
                               lr=1e-2) == 1.0
  assert np.mean(_softmax_regression(xtr, ytr, 4)(xte) == yte) == 1.0
  # Overlapping classes: the probe's accuracy is the reference's, within 2 points.
  xtr, ytr = blobs(2048, 2.5)
  xte, yte = blobs(1000, 2.5)
  ref = np.mean(_softmax_regression(xtr, ytr, 4)(xte) == yte)
  got = evaluate.linear_probe(evaluate.shard_rows(xtr, ytr), xte, yte, num_classes=4,
                              epochs=100, lr=1e-2)
  assert 0.4 < ref < 0.95 and abs(got - ref) <= 0.02, (got, ref)
