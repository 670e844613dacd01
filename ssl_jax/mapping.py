"""How the per-replica train step is mapped onto the devices (`config.parallel`).

The step itself is one pure function of one replica's state and batch, with
named-axis collectives over `devices.AXIS` (BatchNorm statistics, gradient
means, the bank's gathers). It is mapped in one of two ways, with the same
arrays going in and out: every state leaf and input is [D_global, ...], row k
on global device k.

- "pmap": `jax.pmap`, the historical mapping. With several processes each
  call converts its arguments per process, which costs time on every step
  that grows with the state's leaf count (benchmarks/loop_overhead.py).
- "mesh": `jax.jit` over `jax.shard_map` on one `Mesh` of every device of
  every process (axis `batch`). The state is a global `jax.Array`, donated to
  each call; batches become global arrays with
  `jax.make_array_from_process_local_data`. Inside, each device sees its own
  row, so the per-replica function runs unchanged.

Checkpoints of a mesh run are written from the saved form (`to_saved`):
every leaf at its own shape, replicated over the mesh, except a sharded bank,
a global [D n, d] array of row blocks (device k's rows, as in the step), so
each process writes and restores only its own rows and nothing gathers the
bank. `from_saved` is the way back; `saved_template` what a restore reads
into, for any device count (the bank's zero padding rows are cut or added).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ssl_jax import devices
from ssl_jax import sharded_bank

PARALLEL = ("mesh", "pmap")


def global_sharding() -> NamedSharding:
  """Row k of a [D_global, ...] array on global device k (jax.devices() order): the
  step's layout (`devices.step_sharding`) over every device of every process."""
  return devices.step_sharding(jax.devices())


def _is_global(x: Any, sharding: NamedSharding) -> bool:
  return (isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
          and x.sharding.mesh.devices.size == sharding.mesh.devices.size)


def is_global(x: Any) -> bool:
  """Whether x is an array over every device of every process (a mesh run's)."""
  return _is_global(x, global_sharding())


def to_global(tree: Any, sharding: Optional[NamedSharding] = None) -> Any:
  """Per-process arrays [D_local, ...] (host NumPy or on local devices) -> global
  [D_global, ...] arrays with `sharding` (default `global_sharding()`), moving
  no data that is already on its device. Identity for leaves that are global
  already."""
  sharding = sharding or global_sharding()
  n = sharding.mesh.devices.size

  def one(x):
    if _is_global(x, sharding):
      return x
    if isinstance(x, jax.Array):
      # Already on this process's devices (slice i on local device i): wrap the
      # same buffers as the global array's local shards.
      shards = [s.data for s in x.addressable_shards]
      return jax.make_array_from_single_device_arrays((n, *x.shape[1:]), sharding, shards)
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, (n, *x.shape[1:]))
  return jax.tree_util.tree_map(one, tree)


def to_local(tree: Any) -> Any:
  """Global [D_global, ...] arrays -> this process's [D_local, ...] rows on its devices,
  without a copy (what the pmapped evaluation programs take). Identity for
  arrays this process holds whole."""
  def one(x):
    # pmap's own outputs (PmapSharding) go back into pmap as they are.
    if (not isinstance(x, jax.Array) or x.is_fully_addressable
        or not isinstance(x.sharding, NamedSharding)):
      return x
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    local = devices.step_sharding([s.device for s in shards])
    return jax.make_array_from_single_device_arrays(
        (len(shards), *x.shape[1:]), local, [s.data for s in shards])
  return jax.tree_util.tree_map(one, tree)


def _saved_specs(tree: Any, bank_sharded: bool) -> Any:
  """P() (replicated) for every leaf of a TrainState, P(AXIS) for a sharded bank."""
  specs = jax.tree_util.tree_map(lambda _: P(), tree)
  return specs.replace(bank=P(devices.AXIS)) if bank_sharded else specs


@functools.lru_cache(maxsize=None)
def _layout_program(mesh: jax.sharding.Mesh, treedef, bank_sharded: bool, saving: bool):
  """The global program between the step's [D, ...] layout and the saved form.

  Built with shard_map, so each device only reads or writes its own buffers:
  no collective, no data moves between devices (a replicated leaf's rows are
  equal by construction, which check_vma=False lets shard_map trust).
  """
  specs = _saved_specs(jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves),
                       bank_sharded)
  if saving:
    return jax.jit(jax.shard_map(
        lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree), mesh=mesh,
        in_specs=P(devices.AXIS), out_specs=specs, check_vma=False))
  return jax.jit(jax.shard_map(
      lambda tree: jax.tree_util.tree_map(lambda x: x[None], tree), mesh=mesh,
      in_specs=(specs,), out_specs=P(devices.AXIS), check_vma=False), donate_argnums=0)


def layout_program(tree: Any, bank_sharded: bool, saving: bool) -> Callable:
  """The jitted program `to_saved` (saving) or `from_saved` runs for `tree`: global
  arrays or jax.ShapeDtypeStruct with shardings (benchmarks/scale.py lowers it)."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  return _layout_program(leaves[0].sharding.mesh, treedef, bank_sharded, saving)


def to_saved(state: Any, bank_sharded: bool) -> Any:
  """A global step-layout TrainState ([D, ...] leaves) -> its saved form, on the devices.

  Every leaf [D, ...] -> [...] replicated; a sharded bank [D, n, d] -> [D n, d]
  row-sharded (zero rows past N pad the last blocks, `sharded_bank.split_bank`).
  A copy: the state keeps training. Every process calls it at the same step.
  """
  return layout_program(state, bank_sharded, True)(state)


def from_saved(saved: Any, bank_sharded: bool) -> Any:
  """The inverse of `to_saved` (donating `saved`): the step's global [D, ...] state."""
  return layout_program(saved, bank_sharded, False)(saved)


def saved_template(abstract: Any, bank_sharded: bool,
                   sharding: Optional[NamedSharding] = None) -> Any:
  """The restore target of a mesh run: `abstract`'s leaves (true shapes, e.g.
  `builders.abstract_state`) as jax.ShapeDtypeStruct with the saved form's
  shardings over `sharding`'s mesh (default: every device). A sharded bank
  [N, d] becomes [D n, d] for this run's D; each process then reads only its
  rows (a checkpoint written on another device count is cut or zero-padded
  to it: `checkpoint.restore_latest`)."""
  mesh = (sharding or global_sharding()).mesh
  specs = _saved_specs(abstract, bank_sharded)
  template = jax.tree_util.tree_map(
      lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
      abstract, specs)
  if bank_sharded:
    n, d = abstract.bank.shape
    rows = mesh.devices.size * sharded_bank.shard_rows(n, mesh.devices.size)
    template = template.replace(bank=jax.ShapeDtypeStruct(
        (rows, d), abstract.bank.dtype, sharding=template.bank.sharding))
  return template


class MeshStep:
  """The "mesh" step: `jax.jit` over `jax.shard_map`, taking [D, ...] arguments.

  Calling it makes the inputs after the state global (`to_global`); the state
  is expected global already (`to_global` once, after placing it), as the
  step returns it. `lower` takes abstract arguments (jax.ShapeDtypeStruct)
  like a pmapped function's, for compiling without running
  (benchmarks/scale.py).
  """

  def __init__(self, fn: Callable, sharding: NamedSharding):
    mesh, spec = sharding.mesh, sharding.spec

    def per_device(*args):
      # Each device holds row [1, ...] of every [D, ...] argument.
      out = fn(*jax.tree_util.tree_map(lambda x: x[0], args))
      return jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], out)
    self.sharding = sharding
    # check_vma=False: pmap's semantics, which the per-replica code was written
    # for (a scan carry that starts replicated and becomes per-device, as in
    # the chunked bank, is legal there).
    self.jitted = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec,
                                        check_vma=False), donate_argnums=(0,))

  def __call__(self, state, *inputs):
    return self.jitted(state, *to_global(inputs, self.sharding))

  def lower(self, *args):
    placed = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), args)
    return self.jitted.lower(*placed)


def map_step(fn: Callable, parallel: str,
             devices_: Optional[Sequence[jax.Device]] = None) -> Callable:
  """`fn(state, *inputs)` of one replica -> the step the loop calls on [D, ...] arrays.

  The state (first argument) is donated. devices_: the devices to map over
  (all of every process by default; a prefix for compiling at a smaller
  count).
  """
  if parallel == "pmap":
    return jax.pmap(fn, axis_name=devices.AXIS, donate_argnums=(0,),
                    devices=list(devices_) if devices_ is not None else None)
  if parallel != "mesh":
    raise ValueError(f"config.parallel must be one of {list(PARALLEL)}, got {parallel!r}.")
  return MeshStep(fn, devices.step_sharding(jax.devices() if devices_ is None else devices_))
