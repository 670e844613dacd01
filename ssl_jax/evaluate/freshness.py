"""How far the memory bank has drifted from the network it stands in for.

A bank row is the embedding of its image as some earlier network saw it
(the gradient rule moves every row every step; NPID's momentum rule writes a
row only when its image is in a batch). kNN against the bank is only as good
as the rows are fresh, so at each evaluation the run compares the rows of a
fixed, seeded probe set of training images with fresh embeddings of the same
images (evaluation preprocessing): the cosine of each pair, its mean and 5th
percentile, and the bank's effective rank (a collapsed bank has a small one).
"""

from __future__ import annotations

import jax
import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import devices

PERCENTILE = 5


def probe_split(train: data_lib.Split, size: int, seed: int = 0) -> data_lib.Split:
  """This process's part of a seeded probe set of min(size, N) training instances.

  The probe set is split over the processes as the training split is (each
  process picks its share from its own rows), so every process embeds only
  images it holds. `source_index` holds the global instance indices of the rows.
  """
  layout = data_lib.Layout(min(int(size), train.num_examples), train.layout.num_shards,
                           train.layout.process_index, train.layout.process_count)
  lo, hi = layout.local_bounds
  rng = np.random.default_rng([seed, train.layout.process_index])
  rows = np.sort(rng.choice(len(train), size=hi - lo, replace=False))
  return data_lib.Split(train.images[rows], train.labels[rows], train.class_names,
                        source_index=rows + train.offset, layout=layout)


def cosines(bank_rows: np.ndarray, fresh: np.ndarray) -> np.ndarray:
  """Cosine of each bank row with its fresh embedding: [P, d] x [P, d] -> [P] (float64)."""
  a, b = np.asarray(bank_rows, np.float64), np.asarray(fresh, np.float64)
  norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
  return np.sum(a * b, axis=1) / norms


def gram(bank: np.ndarray, chunk: int = 65536) -> np.ndarray:
  """The Gram matrix sum_i x_i x_i^T of an [N, d] bank's rows: [d, d], float64,
  accumulated over row chunks. Zero rows (a sharded bank's padding) add nothing,
  and the Gram matrices of row blocks add up to the whole bank's."""
  d = bank.shape[1]
  out = np.zeros((d, d))
  for lo in range(0, len(bank), chunk):
    x = np.asarray(bank[lo:lo + chunk], np.float64)
    out += x.T @ x
  return out


def effective_rank(bank: np.ndarray, chunk: int = 65536) -> float:
  """exp(entropy) of the normalised singular values of an [N, d] bank (Roy & Vetterli, 2007).

  Between 1 (every row on one line) and d (singular values all equal).
  From the d x d Gram matrix (`gram`).
  """
  return rank_of_gram(gram(bank, chunk))


def rank_of_gram(g: np.ndarray) -> float:
  """`effective_rank` of the bank whose Gram matrix is g [d, d]."""
  sv = np.sqrt(np.clip(np.linalg.eigvalsh(g), 0.0, None))
  p = sv / max(sv.sum(), 1e-300)
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def read_sharded(bank: jax.Array, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A bank sharded over several processes' devices ([D, n, d], device k holding rows
  [k n, (k + 1) n)) -> (its rows at this process's instance ids [P, d], its
  Gram matrix [d, d] float64), without gathering it.

  Each process reads its own devices' rows; only the requested rows (P d
  values in all) and one Gram matrix per process travel between processes,
  so every process must call this at the same point.
  """
  shards = sorted(bank.addressable_shards, key=lambda s: s.index[0].start or 0)
  blocks = {s.index[0].start or 0: np.asarray(s.data)[0] for s in shards}   # device k: [n, d]
  n, processes, me = bank.shape[1], jax.process_count(), jax.process_index()
  held = devices.gather_processes(np.asarray(sorted(blocks)), [len(blocks)] * processes)
  block_owner = np.empty(len(held), np.int64)
  block_owner[held] = np.repeat(np.arange(processes), len(blocks))
  local_gram = sum(gram(b) for b in blocks.values())
  # Sent as raw 32-bit words: without jax_enable_x64 a float64 array would
  # travel (and be summed) as float32.
  words = devices.gather_processes(local_gram.view(np.uint32)[None], [1] * processes)
  g = np.ascontiguousarray(words).view(np.float64).sum(axis=0)
  ids = np.asarray(ids, np.int32)
  counts = devices.gather_processes(np.asarray([len(ids)], np.int32), [1] * processes)
  wanted = devices.gather_processes(ids, counts.tolist()).astype(np.int64)  # everyone's, in order
  owner = block_owner[wanted // n]
  order = np.argsort(owner, kind="stable")          # grouped by the process holding them
  mine = [i for i in wanted[order] if block_owner[i // n] == me]
  d, dtype = bank.shape[-1], blocks[min(blocks)].dtype
  rows = np.stack([blocks[i // n][i % n] for i in mine]) if mine else np.zeros((0, d), dtype)
  everyone = np.empty((len(wanted), d), dtype)
  everyone[order] = devices.gather_processes(rows, np.bincount(owner, minlength=processes).tolist())
  start = int(counts[:me].sum())
  return everyone[start:start + len(ids)], g


def steps_since_write(ids: np.ndarray, tables: dict[int, np.ndarray], step: int,
                      steps_per_epoch: int) -> np.ndarray:
  """For NPID's momentum rule: steps since each instance's row was last written.

  ids: [P] global instance indices; tables: {epoch: `data.epoch_indices` of
  that epoch} for the epoch of the last step taken and the one before it;
  step: steps taken. A row is written by the step whose batch holds its
  image. A row written in neither epoch counts `step`, as if never written
  (an upper bound: only images that both epochs' remainders left out).
  """
  ids = np.asarray(ids, np.int64)
  out = np.full(len(ids), step, np.int64)
  found = np.zeros(len(ids), bool)
  last = step - 1                                   # 0-based index of the last step taken
  for epoch in (last // steps_per_epoch, last // steps_per_epoch - 1):
    if epoch < 0 or epoch not in tables:
      continue
    taken = min(steps_per_epoch, last - epoch * steps_per_epoch + 1)
    table = np.asarray(tables[epoch]).reshape(steps_per_epoch, -1)[:taken]
    flat = table.reshape(-1).astype(np.int64)
    written_at = np.repeat(epoch * steps_per_epoch + np.arange(taken), table.shape[1])
    order = np.argsort(flat, kind="stable")
    pos = np.minimum(np.searchsorted(flat[order], ids), len(flat) - 1)
    hit = ~found & (flat[order][pos] == ids) if len(flat) else np.zeros_like(found)
    out[hit] = step - (written_at[order][pos][hit] + 1)
    found |= hit
  return out
