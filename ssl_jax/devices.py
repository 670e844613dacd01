"""Device placement for the pmapped data axis: one axis name, replicate, prefetch.

Arrays are placed with the same mesh axis name the pmapped step uses, so the
step's inputs and outputs share one sharding and the step compiles once
(flax's `jax_utils.replicate` names its axis differently, which costs a
second compilation on the first step).
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

AXIS = "batch"  # the name of the data-parallel axis in every pmap of the project


def processor_name(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name and widest AVX level, e.g. 'AMD EPYC (avx512)'.

  Read from `cpuinfo`; "unknown" where there is no such file or no name.
  """
  name, flags = "unknown", set()
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith("model name") and name == "unknown":
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
          flags = set(line.split(":", 1)[1].split())
  except OSError:
    return name
  level = next((f for f in ("avx512f", "avx2", "avx") if f in flags), None)
  return f"{name} ({level.replace('512f', '512')})" if level else name


def describe() -> str:
  """'<count> x <device kind>'; on the CPU backend also the processor and cores.

  Results computed on the CPU depend on the machine, not only on the seed:
  the same runs on two of this project's machines (same code, jax and data)
  ended up to 0.8 kNN points apart (experiments/CLAIMS.md, claim 4),
  presumably because XLA compiles for the host's instruction set and float
  rounding differs. A table made on the CPU says which processor made it.
  """
  out = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  if jax.devices()[0].platform == "cpu":
    out += f" ({processor_name()}, {os.cpu_count()} cores)"
  return out


def memory_stat(key: str) -> Optional[int]:
  """One of the first local device's allocator statistics ('bytes_limit',
  'peak_bytes_in_use', ...), or None where the backend does not say (CPU)."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # CPU backends raise or return None
    return None
  return int(stats[key]) if stats and key in stats else None


def memory_limit_bytes() -> Optional[int]:
  """Bytes the allocator of the first local device may use; None where unknown (CPU)."""
  return memory_stat("bytes_limit")


def step_sharding(devices: Sequence[jax.Device]) -> jax.sharding.NamedSharding:
  """Row i of a [len(devices), ...] array on devices[i] (the pmapped step's layout)."""
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def place(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Puts this process's per-device slices [D_local, ...] on its devices, once.

  Returns arrays with the sharding of the pmapped step's inputs and outputs
  (slice i on local device i, also with several processes, where pmap's
  outputs hold only each process's own devices), so that passing them to
  every step moves no data; a host array given to pmap would be sent again
  at every call.
  """
  sharding = step_sharding(list(devices or jax.local_devices()))
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(np.shape(x), sharding,
                                             lambda index: np.asarray(x[index])), tree)


def replicate(tree: Any, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Copies every leaf onto each local device: leaf [...] -> [D, ...]."""
  d = len(devices or jax.local_devices())
  return place(jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(jax.device_get(x)), (d, *np.shape(x))), tree),
      devices)


def distribute(x: np.ndarray, devices: Optional[Sequence[jax.Device]] = None) -> Any:
  """Gives global device i (of the pmapped axis) the slice x[i]: [D_global, ...].

  The counterpart of `replicate` for state that differs per device (a sharded
  bank). Each process places only its own devices' slices.
  """
  x = np.asarray(jax.device_get(x))
  if jax.process_count() > 1:
    per = jax.local_device_count()
    x = x[jax.process_index() * per:(jax.process_index() + 1) * per]
  return place(x, devices)


def all_rows(x: jax.Array) -> np.ndarray:
  """A pmap output [D_global, ...] -> all of it as NumPy, on every process."""
  local = local_rows(x)
  return gather_processes(local, [len(local)] * jax.process_count())


def unreplicate(tree: Any) -> Any:
  """This process's first replica of every leaf, as NumPy: [D, ...] -> [...].

  Reads the lowest-indexed shard this process holds, so it works for arrays
  spanning several processes too (where `x[0]` would name a replica another
  process holds). No device computation is launched: with several
  processes an extra one (even `x[0]` on a local array) can be queued behind
  another process's collectives and deadlock (seen with 2 processes on gloo).
  """
  def first(x):
    if isinstance(x, jax.Array):
      shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
      return np.asarray(shard.data)[0]
    return np.asarray(x)[0]
  return jax.tree_util.tree_map(first, tree)


def local_rows(x: jax.Array) -> np.ndarray:
  """A pmap output [D_global, ...] -> this process's [D_local, ...] rows as NumPy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])
  return np.asarray(x)


def gather_processes(x: np.ndarray, counts: Sequence[int]) -> np.ndarray:
  """Every process's rows, concatenated in process order, on every process.

  x: this process's [counts[process_index], ...] rows; returns [sum(counts), ...].
  Identity with one process.
  """
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  x = np.asarray(x)
  # process_allgather needs one shape everywhere: pad to the largest share.
  padded = np.zeros((max(counts), *x.shape[1:]), x.dtype)
  padded[:len(x)] = x
  everyone = np.asarray(multihost_utils.process_allgather(padded))  # [P, max, ...]
  return np.concatenate([everyone[p, :c] for p, c in enumerate(counts)])


def any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process; the same answer in every process.

  Every process must call it at the same point of its program (a collective).
  """
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.asarray(multihost_utils.process_allgather(np.asarray([flag], np.int32))).any())


def prefetch(batches: Iterable[Any], size: int = 2,
             put: Optional[Callable[[Any], Any]] = None) -> Iterator[Any]:
  """Sends batches [D_local, b, ...] to this process's devices `size` steps ahead of the step.

  Each batch is copied once, slice i straight to local device i with the
  step's sharding (`put`: `place`, or `mapping.to_global` for the mesh
  step); flax's `prefetch_to_device` first restacked it on the host. The
  same with several processes, whose steps then find their batch on the
  devices too instead of sending it at the call.
  """
  put = put or place
  queue: collections.deque = collections.deque()
  batches = iter(batches)

  def enqueue(n: int) -> None:
    for batch in itertools.islice(batches, n):
      queue.append(put(batch))
  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
