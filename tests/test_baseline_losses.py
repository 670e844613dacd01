"""SimCLR's NT-Xent and BYOL's loss and EMA against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl_jax.methods import byol
from ssl_jax.methods import simclr


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def nt_xent_reference(z1, z2, t):
  z = _unit(np.concatenate([z1, z2]))
  n = len(z1)
  sim = z @ z.T / t
  total = 0.0
  for i in range(2 * n):
    pos = (i + n) % (2 * n)
    others = [k for k in range(2 * n) if k != i]
    total += -(sim[i, pos] - np.log(np.sum(np.exp(sim[i, others]))))
  return total / (2 * n)


@pytest.mark.parametrize("b,d", [(1, 4), (6, 16), (16, 32)])
def test_nt_xent_matches_numpy(b, d):
  rng = np.random.default_rng(b)
  z1, z2 = rng.normal(size=(b, d)), rng.normal(size=(b, d))
  for t in (0.1, 0.5):
    got = jax.jit(simclr.nt_xent, static_argnums=2)(jnp.asarray(z1, jnp.float32),
                                                    jnp.asarray(z2, jnp.float32), t)
    np.testing.assert_allclose(got, nt_xent_reference(z1, z2, t), rtol=1e-5, atol=1e-6)


def test_nt_xent_under_pmap_uses_the_global_batch():
  n_dev, b, d = 4, 3, 8
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(n_dev * b, d)), rng.normal(size=(n_dev * b, d))
  shard = lambda x: jnp.asarray(x, jnp.float32).reshape(n_dev, b, d)

  def per_device(z1, z2):
    loss = simclr.nt_xent(z1, z2, 0.2, "batch")
    return jax.lax.pmean(loss, "batch")

  losses = jax.pmap(per_device, axis_name="batch")(shard(z1), shard(z2))
  np.testing.assert_allclose(losses, nt_xent_reference(z1, z2, 0.2), rtol=1e-5)
  # Gradients as the train step takes them: each replica differentiates its own
  # loss; through the all-gather, the cotangents of every replica's loss reach
  # the replica that owns z, so it holds sum_d dL_d/dz = D * dL/dz, and the
  # pmean of parameter gradients over replicas is then the global gradient.
  g_global = jax.grad(lambda a, c: simclr.nt_xent(a, c, 0.2), argnums=(0, 1))(
      jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32))
  g_dev = jax.pmap(jax.grad(lambda a, c: simclr.nt_xent(a, c, 0.2, "batch"), argnums=(0, 1)),
                   axis_name="batch")(shard(z1), shard(z2))
  for got, want in zip(g_dev, g_global):
    np.testing.assert_allclose(np.asarray(got).reshape(-1, d), n_dev * np.asarray(want),
                               rtol=1e-4, atol=1e-6)


def test_byol_loss_matches_numpy_and_stops_target_gradients():
  rng = np.random.default_rng(1)
  p1, p2, t1, t2 = (rng.normal(size=(5, 8)) for _ in range(4))
  expected = (np.mean(2 - 2 * np.sum(_unit(p1) * _unit(t2), -1))
              + np.mean(2 - 2 * np.sum(_unit(p2) * _unit(t1), -1)))
  args = [jnp.asarray(x, jnp.float32) for x in (p1, p2, t1, t2)]
  np.testing.assert_allclose(byol.byol_loss(*args), expected, rtol=1e-5)
  g = jax.grad(byol.byol_loss, argnums=(0, 2))(*args)
  assert np.abs(g[0]).max() > 1e-3 and np.abs(g[1]).max() == 0.0


def test_target_decay_schedule_and_ema():
  np.testing.assert_allclose(byol.target_decay(0, 100, 0.99), 0.99, rtol=1e-6)
  np.testing.assert_allclose(byol.target_decay(50, 100, 0.99), 0.995, rtol=1e-6)
  np.testing.assert_allclose(byol.target_decay(100, 100, 0.99), 1.0, rtol=1e-6)
  out = byol.ema({"w": jnp.ones(3)}, {"w": jnp.zeros(3)}, 0.9)
  np.testing.assert_allclose(out["w"], 0.9)


def test_classifier_loss_matches_numpy_with_its_gradient():
  """The supervised method's cross-entropy and its gradient in the logits, in float64."""
  from ssl_jax.methods import supervised
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 12)).astype(np.float32) * 3
  labels = rng.integers(0, 12, 6).astype(np.int32)
  x = logits.astype(np.float64)
  logp = x - x.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  want = -np.mean(logp[np.arange(6), labels])
  want_grad = (np.exp(logp) - np.eye(12)[labels]) / 6
  got, grad = jax.value_and_grad(supervised.classifier_loss)(jnp.asarray(logits), labels)
  np.testing.assert_allclose(float(got), want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-7)
  # bf16 logits (config.model.dtype) are upcast before the softmax
  low = supervised.classifier_loss(jnp.asarray(logits, jnp.bfloat16), labels)
  assert low.dtype == jnp.float32 and abs(float(low) - want) < 0.05
