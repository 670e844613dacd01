"""The two mappings of the step (`config.parallel`), the large-bank guard and the
preemption checks between steps, on 4 fake CPU devices.

pmap and jit-over-shard_map (with shard_map's replication checks off, pmap's
own semantics) compile the same per-replica program: after 20 steps the two
states are bit-identical, bank, sharded bank and BYOL's target included. (With
the checks on, XLA summed some all-reduces in another order: 4e-7 apart after
one step.) tests/test_multiprocess.py compares them across 2 processes.
"""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from ssl_jax import builders
from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import mapping
from ssl_jax import run_config
from ssl_jax import train
from ssl_jax.loop import Loop
from tests.helpers import needs_cifar10, setup_training, tiny_config

STEPS = 20


def _run(config, state, model, tx, split, parallel):
  spe = data_lib.steps_per_epoch(split.num_examples, config.batch_size)
  step = train.mapped_step(builders.make_train_step(config, model, tx, 100, split.num_examples),
                           spe, False, parallel)
  state = builders.place_state(config, state)
  if parallel == "mesh":
    state = mapping.to_global(state)
  for epoch in range(STEPS // spe + 1):
    for batch in devices.prefetch(data_lib.train_batches(
        split, global_batch=config.batch_size, num_local_devices=4, seed=0, epoch=epoch)):
      if int(devices.unreplicate(state.step)) == STEPS:
        break
      state, sums = step(state, {"image": batch["image"], "index": batch["index"]})
  return state


@needs_cifar10
@pytest.mark.parametrize("method,sharded,chunk_rows", [
    pytest.param("ours", False, 0, marks=pytest.mark.slow),
    pytest.param("ours", True, 0, marks=pytest.mark.extended),
    pytest.param("ours", True, 96, marks=pytest.mark.extended),
    pytest.param("byol", False, 0, marks=pytest.mark.extended)],
    ids=["ours", "ours-sharded-bank", "ours-sharded-chunked-bank", "byol"])
def test_mesh_and_pmap_steps_agree_after_twenty_steps(method, sharded, chunk_rows):
  config = tiny_config(method=method)
  config.optim.base_lr, config.bank.lr, config.bank.sharded = 0.02, 1.0, sharded
  config.bank.chunk_rows = chunk_rows
  split, model, tx, state0 = setup_training(config)
  a = _run(config, state0, model, tx, split, "pmap")
  b = _run(config, state0, model, tx, split, "mesh")
  assert isinstance(b.step.sharding, jax.sharding.NamedSharding)
  ha, hb = (builders.host_state(config, s, split.num_examples) for s in (a, b))
  assert int(ha.step) == int(hb.step) == STEPS
  chex.assert_trees_all_equal(hb, ha)
  # It trained: the parameters moved by far more than the tolerance.
  moved = max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(
      jax.tree_util.tree_leaves(hb.params), jax.tree_util.tree_leaves(state0.params)))
  assert moved > 1e-3
  # Every replica of the mesh run is bit-identical (a sharded bank aside).
  assert builders.check_replicas(b, include_bank=not sharded)


def test_to_global_and_to_local_keep_each_row_on_its_device():
  x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
  g = mapping.to_global({"x": x})["x"]
  assert g.sharding.is_equivalent_to(mapping.global_sharding(), 2)
  for shard in g.addressable_shards:
    k = jax.devices().index(shard.device)
    np.testing.assert_array_equal(np.asarray(shard.data), x[k:k + 1])
  assert mapping.to_global(g) is g            # already global: untouched
  placed = devices.place(x)                   # this process's layout: the same buffers
  wrapped = mapping.to_global(placed)
  assert ([s.data.unsafe_buffer_pointer() for s in wrapped.addressable_shards]
          == [s.data.unsafe_buffer_pointer() for s in placed.addressable_shards])
  assert mapping.to_local(g) is g             # one process holds it whole


def test_bad_parallel_and_check_interval_are_refused():
  config = tiny_config()
  config.parallel = "pjit"
  with pytest.raises(run_config.ConfigError, match=r"config.parallel must be one of"):
    run_config.validate_config(config, 4)
  config = tiny_config()
  config.preemption_check_steps = 0
  with pytest.raises(run_config.ConfigError, match=r"config.preemption_check_steps must be >= 1"):
    run_config.validate_config(config, 4)
  with pytest.raises(ValueError, match="config.parallel"):
    mapping.map_step(lambda s: s, "pjit")


def test_large_bank_guard_shards_or_refuses_naming_the_field():
  config = tiny_config()
  config.bank.shard_above = 1000
  same, note = run_config.shard_large_bank(config, 1000, 4)     # not above: as it was
  assert same is config and note is None
  sharded, note = run_config.shard_large_bank(config, 1_281_167, 4)
  assert sharded.bank.sharded is True and config.bank.sharded is False
  assert "1,281,167 rows > config.bank.shard_above (1,000)" in note
  assert "sharded over the 4 devices (156 MiB each instead of 626 MiB" in note
  assert run_config.shard_large_bank(config, 1_281_167, 1) == (config, None)  # one device
  config.bank.shard_above = 0                                   # off
  assert run_config.shard_large_bank(config, 1_281_167, 4) == (config, None)
  simclr = tiny_config(method="simclr")                          # no bank
  assert run_config.shard_large_bank(simclr, 1_281_167, 4) == (simclr, None)
  config = tiny_config()
  config.bank.shard_above, config.loss.kl_direction = 1000, "p_q"  # no sharded form
  with pytest.raises(run_config.ConfigError) as e:
    run_config.shard_large_bank(config, 1_281_167, 4)
  assert "config.bank.shard_above (1,000)" in str(e.value)
  assert "config.bank.shard_above=0 to keep 626 MiB on every device" in str(e.value)
  assert "\n" not in str(e.value)


@dataclasses.dataclass
class _Stop:
  requested: bool = False
  signum: int = 15


def test_processes_agree_on_a_stop_only_every_check_interval(monkeypatch):
  """Several processes gather their SIGTERM flags at steps 10, 20, ... and at epoch
  ends only; in between no process waits for anything. One process reads its own
  flag at every step."""
  config = tiny_config()
  config.preemption_check_steps = 10
  loop = Loop(config=config, workdir="", train=None, steps_per_epoch=7, schedule=None,
              manager=None, writer=None, is_main=True, state=None, step=0, history=[])
  asked = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(devices, "any_process", lambda flag: asked.append(loop.step) or True)
  for step, agreed in [(9, False), (10, True), (11, False), (19, False), (20, True)]:
    loop.step = step
    assert loop.stop_agreed(_Stop()) is agreed, step
  loop.step = 7
  assert loop.stop_agreed(_Stop(), at_epoch_end=True)
  assert asked == [10, 20, 7]
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  loop.step = 3
  assert loop.stop_agreed(_Stop(requested=True)) and not loop.stop_agreed(_Stop())
  assert asked == [10, 20, 7]


def test_any_process_with_one_process_is_the_flag_itself():
  assert devices.any_process(True) is True and devices.any_process(False) is False


def _toy_state(n: int, d: int = 3):
  """A host TrainState with a bank of n distinct rows."""
  from ssl_jax.state import TrainState
  return TrainState(step=np.int32(7), params={"w": np.arange(4, dtype=np.float32).reshape(2, 2)},
                    batch_stats={}, opt_state=(np.full(2, 0.5, np.float32),),
                    bank=np.arange(1, n * d + 1, dtype=np.float32).reshape(n, d),
                    rng=np.array([1, 2], np.uint32))


@pytest.mark.parametrize("n", [12, 10, 3], ids=["N=12", "N=10", "N=3"])
def test_the_saved_form_round_trips_on_every_device_count_without_a_collective(tmp_path, n):
  """to_saved: replicated leaves at their own shape, the sharded bank as [D n, d] row
  blocks (zero padding past N); a checkpoint of it restores on 1 to 4 devices,
  and as host arrays (cut to N). The layout programs move no data between
  devices: no collective in their compiled text."""
  from ssl_jax import checkpoint, sharded_bank
  host = _toy_state(n)
  config = tiny_config(**{"bank.sharded": True})
  four = mapping.to_global(builders.place_state(config, host))
  saved = mapping.to_saved(four, True)
  assert saved.bank.shape == (4 * -(-n // 4), 3) and saved.params["w"].shape == (2, 2)
  np.testing.assert_array_equal(np.asarray(saved.bank)[:n], host.bank)
  assert not np.asarray(saved.bank)[n:].any()
  hlo = mapping.layout_program(four, True, True).lower(four).compile().as_text()
  assert not any(op in hlo for op in ("all-gather", "all-reduce", "collective-permute",
                                      "all-to-all")), "the saved form moved data"
  manager = checkpoint.create_manager(str(tmp_path))
  checkpoint.save(manager, saved, wait=True)
  abstract = jax.eval_shape(lambda: host)
  for count in (1, 2, 3, 4):
    sharding = devices.step_sharding(jax.devices()[:count])
    template = mapping.saved_template(abstract, True, sharding)
    restored = checkpoint.restore_latest(checkpoint.create_manager(str(tmp_path)), template,
                                         expected_shapes=abstract)
    assert restored.bank.shape == (count * -(-n // count), 3)
    state = mapping.from_saved(restored, True)
    assert state.bank.shape == (count, -(-n // count), 3)
    np.testing.assert_array_equal(sharded_bank.join_bank(devices.all_rows(state.bank), n),
                                  host.bank, err_msg=f"{count} devices")
    rest = lambda s: (s.step, s.params, s.opt_state, s.rng)
    for x, y in zip(jax.tree_util.tree_leaves(devices.unreplicate(rest(state))),
                    jax.tree_util.tree_leaves(rest(host))):
      np.testing.assert_array_equal(x, y)
  on_host = checkpoint.restore_latest(checkpoint.create_manager(str(tmp_path)), abstract)
  np.testing.assert_array_equal(on_host.bank, host.bank)


def test_a_bank_of_other_rows_than_padding_allows_is_refused():
  from ssl_jax import checkpoint
  # The rows a sharded save of N rows can have on D devices, and nothing else.
  for n in (1, 7, 500, 501):
    allowed = {d * -(-n // d) for d in range(1, n + 1)}
    for rows in range(n - 2, 3 * n + 3):
      assert checkpoint.padded_rows(rows, n) == (rows in allowed), (rows, n)
  saved = {"bank": ((504, 128), "float32")}
  assert checkpoint.structure_difference(saved, {"bank": ((501, 128), "float32")}) is None
  assert "bank: saved (499, 128)" in checkpoint.structure_difference(
      {"bank": ((499, 128), "float32")}, {"bank": ((500, 128), "float32")})
