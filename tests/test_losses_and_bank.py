"""The method core against float64 NumPy references, jax.grad, jit, vmap and pmap."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssl_jax
from ssl_jax import bank as bank_lib
from tests import reference as ref

# (B, N, d): B=1, N not a multiple of B, N < B is impossible (distinct indices).
SHAPES = [(1, 7, 3), (4, 10, 8), (5, 37, 16), (16, 1000, 128)]
RTOL, ATOL = 2e-5, 2e-6


def _problem(seed, b, n, d):
  rng = np.random.default_rng(seed)
  z = ref.normalize_rows(rng.normal(size=(b, d))).astype(np.float32)
  bank = ref.normalize_rows(rng.normal(size=(n, d))).astype(np.float32)
  idx = rng.permutation(n)[:b].astype(np.int32)
  return z, bank, idx


def _maybe_jit(fn, use_jit, **static):
  fn = functools.partial(fn, **static)
  return jax.jit(fn) if use_jit else fn


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_losses_match_numpy(shape, use_jit):
  z, bank, idx = _problem(hash(shape) % 1000, *shape)
  t = 0.1
  s = _maybe_jit(ssl_jax.bank_logits, use_jit)(z, bank, t)
  assert s.shape == (shape[0], shape[1]) and s.dtype == jnp.float32
  np.testing.assert_allclose(s, ref.bank_logits(z, bank, t), rtol=RTOL, atol=1e-5)
  s64 = ref.bank_logits(z, bank, t)
  np.testing.assert_allclose(
      _maybe_jit(ssl_jax.instance_ce, use_jit)(s, idx), ref.instance_ce(s64, idx),
      rtol=RTOL, atol=1e-5)
  for direction in ("q_p", "p_q"):
    np.testing.assert_allclose(
        _maybe_jit(ssl_jax.sqrt_kl, use_jit, direction=direction)(s),
        ref.sqrt_kl(s64, direction), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      _maybe_jit(ssl_jax.logit_grad, use_jit, kl_weight=0.7)(s, idx),
      ref.logit_grad(s64, idx, 0.7), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_bank_transitions_match_numpy(shape, use_jit):
  z, bank, idx = _problem(hash(shape) % 997, *shape)
  new = _maybe_jit(ssl_jax.momentum_update, use_jit)(bank, z, idx, 0.5)
  np.testing.assert_allclose(new, ref.momentum_update(bank, z, idx, 0.5), rtol=RTOL, atol=ATOL)
  g = ref.logit_grad(ref.bank_logits(z, bank, 0.1), idx, 1.0).astype(np.float32)
  new = _maybe_jit(ssl_jax.grad_update, use_jit, lr=3.0, temperature=0.1)(bank, z, g)
  np.testing.assert_allclose(new, ref.grad_update(bank, z, g, 3.0, 0.1), rtol=1e-4, atol=2e-6)
  np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kl_weight", [0.0, 1.0, 2.5])
def test_grad_update_is_a_gradient_step(shape, kl_weight):
  z, bank, idx = _problem(7, *shape)
  t, lr = 0.07, 5.0

  def loss(v):
    s = ssl_jax.bank_logits(z, v, t)
    return ssl_jax.instance_ce(s, idx) + kl_weight * ssl_jax.sqrt_kl(s)

  expected = bank_lib.normalize_rows(bank - lr * jax.grad(loss)(bank))
  g = ssl_jax.logit_grad(ssl_jax.bank_logits(z, bank, t), idx, kl_weight=kl_weight)
  got = ssl_jax.grad_update(bank, z, g, lr=lr, temperature=t)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # The step must actually move the bank, or the comparison above proves nothing.
  assert np.abs(np.asarray(got) - bank).max() > 1e-3


def test_logit_grad_is_the_batch_mean_gradient_times_b():
  z, bank, idx = _problem(3, 6, 50, 8)
  s = ssl_jax.bank_logits(z, bank, 0.1)
  total = lambda s: ssl_jax.instance_ce(s, idx) + 0.5 * ssl_jax.sqrt_kl(s)
  np.testing.assert_allclose(
      jax.grad(total)(s) * s.shape[0], ssl_jax.logit_grad(s, idx, kl_weight=0.5),
      rtol=1e-5, atol=1e-6)


def test_stop_gradient_changes_the_gradient_and_not_the_value():
  s = jnp.asarray(np.random.default_rng(0).normal(size=(3, 20)) * 3, jnp.float32)
  for direction in ("q_p", "p_q"):
    f = lambda s, sg: ssl_jax.sqrt_kl(s, direction=direction, stop_gradient=sg)
    np.testing.assert_allclose(f(s, True), f(s, False), rtol=1e-6)
    g_sg, g_full = jax.grad(f)(s, True), jax.grad(f)(s, False)
    assert np.abs(g_sg - g_full).max() > 1e-3
    # The full gradient against central finite differences in float64 NumPy.
    eps, e = 1e-4, np.zeros(s.shape)
    e[1, 4] = eps
    s64 = np.asarray(s, np.float64)
    fd = (ref.sqrt_kl(s64 + e, direction) - ref.sqrt_kl(s64 - e, direction)) / (2 * eps)
    np.testing.assert_allclose(g_full[1, 4], fd, rtol=1e-3, atol=1e-6)


def test_numerically_safe_at_low_temperature_in_bf16():
  z, bank, idx = _problem(1, 8, 300, 16)
  bank[idx] = z  # positives at the largest logit, 1 / tau = 20
  bank[np.setdiff1d(np.arange(300), idx)[0]] = -z[0]  # a logit of -20 beside +20
  zb = jnp.asarray(z, jnp.bfloat16)
  t = 0.05

  def total(v, z):
    s = ssl_jax.bank_logits(z, v, t)
    return ssl_jax.instance_ce(s, idx) + ssl_jax.sqrt_kl(s) + ssl_jax.sqrt_kl(s, direction="p_q")

  s = ssl_jax.bank_logits(zb, bank, t)
  assert s.dtype == jnp.float32 and float(jnp.max(s)) > 19.5
  outs = [total(bank, zb), *jax.grad(total, argnums=(0, 1))(bank, zb),
          ssl_jax.grad_update(bank, zb, ssl_jax.logit_grad(s, idx, kl_weight=1.0),
                              lr=10.0, temperature=t),
          ssl_jax.momentum_update(bank, zb, idx, 0.5)]
  for o in outs:
    assert np.all(np.isfinite(np.asarray(o, np.float32)))


def test_no_nan_when_probabilities_underflow_to_zero():
  # Logit gaps of 2000 make exp underflow: p and q hold exact zeros.
  s = jnp.asarray([[1000.0, -1000.0, 0.0, 999.0], [-1000.0, 1000.0, 1000.0, 0.0]])
  idx = jnp.asarray([1, 0])  # positives where p == 0 exactly
  assert float(jnp.min(jax.nn.softmax(s))) == 0.0
  for f in (lambda s: ssl_jax.instance_ce(s, idx),
            lambda s: ssl_jax.sqrt_kl(s),
            lambda s: ssl_jax.sqrt_kl(s, direction="p_q"),
            lambda s: ssl_jax.sqrt_kl(s, stop_gradient=False)):
    assert np.isfinite(f(s)) and np.all(np.isfinite(jax.grad(f)(s)))
  assert np.all(np.isfinite(ssl_jax.logit_grad(s, idx, kl_weight=1.0)))
  # A bank row that cancels to zero stays finite (zero) instead of NaN.
  v = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
  out = ssl_jax.momentum_update(v, jnp.asarray([[-1.0, 0.0]]), jnp.asarray([0]), 0.5)
  assert np.all(np.isfinite(out))


def test_vmap_over_independent_problems():
  zs, banks, idxs = zip(*[_problem(i, 4, 20, 8) for i in range(3)])
  zs, banks, idxs = map(np.stack, (zs, banks, idxs))
  s = jax.vmap(ssl_jax.bank_logits, in_axes=(0, 0, None))(zs, banks, 0.1)
  ce = jax.vmap(ssl_jax.instance_ce)(s, idxs)
  g = jax.vmap(functools.partial(ssl_jax.logit_grad, kl_weight=1.0))(s, idxs)
  new = jax.vmap(functools.partial(ssl_jax.grad_update, lr=1.0, temperature=0.1))(banks, zs, g)
  mom = jax.vmap(ssl_jax.momentum_update, in_axes=(0, 0, 0, None))(banks, zs, idxs, 0.5)
  for i in range(3):
    s64 = ref.bank_logits(zs[i], banks[i], 0.1)
    np.testing.assert_allclose(ce[i], ref.instance_ce(s64, idxs[i]), rtol=RTOL)
    np.testing.assert_allclose(new[i], ref.grad_update(banks[i], zs[i], g[i], 1.0, 0.1),
                               rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(mom[i], ref.momentum_update(banks[i], zs[i], idxs[i], 0.5),
                               rtol=RTOL, atol=ATOL)


def test_inside_pmap_with_a_replicated_bank():
  n_dev = jax.local_device_count()
  assert n_dev == 4, "tests/conftest.py forces 4 CPU devices"
  z, bank, idx = _problem(11, 4 * n_dev, 64, 8)
  t, lr, w = 0.1, 2.0, 1.0

  def step(bank, z, idx):
    s = ssl_jax.bank_logits(z, bank, t)
    loss = ssl_jax.instance_ce(s, idx) + w * ssl_jax.sqrt_kl(s)
    g = ssl_jax.logit_grad(s, idx, kl_weight=w)
    # Gather the whole global batch so each replica applies the same transition.
    gz, gg, gi = (jax.lax.all_gather(x, "batch", tiled=True) for x in (z, g, idx))
    new = ssl_jax.grad_update(bank, gz, gg, lr=lr, temperature=t)
    new = ssl_jax.momentum_update(new, gz, gi, 0.5)
    return new, jax.lax.pmean(loss, "batch")

  shard = lambda x: x.reshape(n_dev, -1, *x.shape[1:])
  banks, losses = jax.pmap(step, axis_name="batch", in_axes=(None, 0, 0))(
      bank, shard(z), shard(idx))
  s64 = ref.bank_logits(z, bank, t)
  g64 = ref.logit_grad(s64, idx, w)
  expected = ref.momentum_update(ref.grad_update(bank, z, g64, lr, t), z, idx, 0.5)
  for r in range(n_dev):
    np.testing.assert_array_equal(banks[r], banks[0])
    np.testing.assert_allclose(losses[r], ref.instance_ce(s64, idx) + w * ref.sqrt_kl(s64),
                               rtol=1e-5)
  np.testing.assert_allclose(banks[0], expected, rtol=1e-4, atol=2e-6)


def test_initialisers():
  v = ssl_jax.random_bank(jax.random.PRNGKey(0), 100, 16)
  assert v.shape == (100, 16)
  np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
  assert abs(float(jnp.mean(v))) < 0.05  # not a constant bank
  x = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
  w = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
  batches = np.array_split(x, [8, 16])  # 8, 8, 7: uneven, last one short
  v = ssl_jax.calibrated_bank(lambda b: jnp.asarray(b) @ w, batches)
  np.testing.assert_allclose(v, ref.normalize_rows(x @ w), rtol=1e-5, atol=1e-6)


def _raises(match, fn, *args, **kwargs):
  with pytest.raises(ValueError, match=re.escape(match)):
    fn(*args, **kwargs)


def test_bad_inputs_raise_clear_errors():
  z, bank, idx = _problem(0, 4, 10, 8)
  s = ssl_jax.bank_logits(z, bank, 0.1)
  g = ssl_jax.logit_grad(s, idx, kl_weight=1.0)
  _raises("`z` and `bank` must have the same embedding dimension", ssl_jax.bank_logits,
          z[:, :5], bank, 0.1)
  _raises("`z` must be a 2-D array", ssl_jax.bank_logits, z[0], bank, 0.1)
  _raises("`bank` must be a 2-D array", ssl_jax.bank_logits, z, bank[None], 0.1)
  _raises("`temperature` must be > 0", ssl_jax.bank_logits, z, bank, 0.0)
  _raises("`logits` must be a 2-D array", ssl_jax.instance_ce, s[0], idx)
  _raises("`idx` values must be in [0, 10)", ssl_jax.instance_ce, s, idx + 10)
  _raises("`idx` values must be in [0, 10)", ssl_jax.logit_grad, s, idx - 20, kl_weight=1.0)
  _raises("`idx` must have one index per row", ssl_jax.instance_ce, s, idx[:2])
  _raises("`idx` must hold integers", ssl_jax.instance_ce, s, idx.astype(np.float32))
  _raises("`direction` must be one of", ssl_jax.sqrt_kl, s, direction="pq")
  _raises("`idx` values must be in [0, 10)", ssl_jax.momentum_update, bank, z, idx + 7, 0.5)
  _raises("`momentum` must be in [0.0, 1.0]", ssl_jax.momentum_update, bank, z, idx, 1.5)
  _raises("`z` and `bank` must have the same", ssl_jax.momentum_update, bank, z[:, :3], idx, 0.5)
  _raises("`g` must have shape (B, N)", ssl_jax.grad_update, bank, z, g[:, :5], lr=1.0,
          temperature=0.1)
  _raises("`temperature` must be > 0", ssl_jax.grad_update, bank, z, g, lr=1.0, temperature=-1)
  _raises("`n` and `d` must be >= 1", ssl_jax.random_bank, jax.random.PRNGKey(0), 0, 3)
  _raises("`batches` is empty", ssl_jax.calibrated_bank, lambda x: x, [])
  # Shape errors are raised at trace time under jit too, not as XLA errors.
  _raises("`z` and `bank` must have the same", jax.jit(ssl_jax.bank_logits, static_argnums=2),
          z[:, :5], bank, 0.1)


@pytest.mark.parametrize("name", ["instance_ce", "logit_grad", "momentum_update"])
def test_checked_catches_an_index_outside_the_bank_under_jit(name):
  """Under jit an index >= N is not refused while tracing; ssl_jax.checked refuses it."""
  n, d = 6, 4
  s = jnp.zeros((3, n))
  bank = ssl_jax.normalize_rows(jnp.ones((n, d)))
  z = ssl_jax.normalize_rows(jnp.ones((3, d)))
  fn = {"instance_ce": lambda idx: ssl_jax.instance_ce(s, idx),
        "logit_grad": lambda idx: ssl_jax.logit_grad(s, idx, kl_weight=1.0),
        "momentum_update": lambda idx: ssl_jax.momentum_update(bank, z, idx, 0.5)}[name]
  bad, good = jnp.array([0, 1, n]), jnp.array([0, 1, n - 1])
  jax.jit(fn)(bad)   # unchecked: no error, a silently wrong result
  checked = jax.jit(ssl_jax.checked(fn))
  err, _ = checked(good)
  err.throw()
  err, _ = checked(bad)
  with pytest.raises(Exception, match=rf"`idx` values must be in \[0, {n}\), got min 0 and max {n}"):
    err.throw()
