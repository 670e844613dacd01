"""Bank freshness: cosine of bank rows with fresh embeddings, effective rank, rows' age."""

import jax
import numpy as np
import pytest

from ssl_jax import builders
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import evaluate
from ssl_jax import steps
from ssl_jax.evaluate import freshness
from tests.helpers import needs_cifar10, setup_training, tiny_config


def test_effective_rank_matches_a_float64_svd_and_its_bounds():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(300, 16)) * np.linspace(0.1, 2.0, 16)
  s = np.linalg.svd(bank, compute_uv=False)
  p = s / s.sum()
  want = np.exp(-np.sum(p * np.log(p)))
  assert freshness.effective_rank(bank.astype(np.float32), chunk=64) == pytest.approx(want, 1e-5)
  assert freshness.effective_rank(np.eye(16)) == pytest.approx(16.0)
  line = np.outer(rng.normal(size=50), rng.normal(size=16))   # every row on one line
  assert freshness.effective_rank(line) == pytest.approx(1.0, abs=1e-6)


def test_cosines_against_a_float64_reference():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(20, 8)), rng.normal(size=(20, 8))
  want = [x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]
  np.testing.assert_allclose(freshness.cosines(a.astype(np.float32), b), want, rtol=1e-6)
  np.testing.assert_allclose(freshness.cosines(a, 3 * a), 1.0)


@pytest.mark.parametrize("step", [1, 6, 7, 8, 13, 14, 20])
def test_steps_since_write_follows_the_batches_step_by_step(step):
  layout = data_lib.Layout(70)
  spe = data_lib.steps_per_epoch(70, 10)          # 7 steps, no remainder
  layout_short = data_lib.Layout(75)               # 7 steps, 5 images left out each epoch
  for lay in (layout, layout_short):
    tables = {e: data_lib.epoch_indices(lay, global_batch=10, num_local_devices=2, seed=3,
                                        epoch=e) for e in range(3)}
    # Reference: replay every step, noting when each row was written.
    written = np.full(lay.num_examples, -1)
    for t in range(step):
      written[tables[t // spe][t % spe].reshape(-1)] = t + 1
    want = np.where(written >= 0, step - written, step)
    ids = np.arange(lay.num_examples)
    got = freshness.steps_since_write(ids, tables, step, spe)
    if step <= 2 * spe:   # (older epochs are not passed: rows unseen for 2 epochs count all)
      np.testing.assert_array_equal(got, want)
    else:
      seen = written > (step - 1) // spe * spe - spe
      np.testing.assert_array_equal(got[seen], want[seen])


@needs_cifar10
def test_the_probe_is_seeded_and_a_bank_of_its_fresh_embeddings_scores_one():
  config = tiny_config(**{"eval.freshness_probe": 100})
  split, model, _, state = setup_training(config)
  probe = freshness.probe_split(split, 100)
  assert len(probe) == 100 and len(set(probe.source_index)) == 100
  np.testing.assert_array_equal(probe.source_index, freshness.probe_split(split, 100).source_index)
  np.testing.assert_array_equal(probe.images, split.images[probe.source_index])
  assert len(freshness.probe_split(split, 10**6)) == len(split)   # at most the whole split

  p_eval = evaluate.make_embed_fn(model, builders.augment_config(config))
  variables = devices.replicate(steps.variables(state))
  z, = evaluate.extract_features(p_eval, variables, probe, batch_size=64,
                                 num_devices=jax.local_device_count(), keep=("z",))
  bank = np.asarray(state.bank, np.float32).copy()
  bank[probe.source_index] = z
  out = builders.bank_freshness(config, p_eval, variables, split, bank, 0, 7)
  assert out["bank_cos_mean"] == pytest.approx(1.0, abs=1e-6)
  assert out["bank_cos_p5"] == pytest.approx(1.0, abs=1e-6)
  assert out["bank_effective_rank"] == pytest.approx(freshness.effective_rank(bank))
  # The calibrated bank (batch-mode BatchNorm) is not the evaluation embedding.
  stale = builders.bank_freshness(config, p_eval, variables, split,
                                  np.asarray(state.bank, np.float32), 0, 7)
  assert stale["bank_cos_mean"] < 0.99 and stale["bank_cos_p5"] < stale["bank_cos_mean"]
  assert builders.bank_freshness(tiny_config(**{"eval.freshness_probe": 0}), p_eval, variables,
                                 split, bank, 0, 7) == {}
  assert builders.bank_freshness(config, p_eval, variables, split, None, 0, 7) == {}
