"""The bank pass with and without chunks (config.bank.chunk_rows): time and XLA temporaries.

    python -m benchmarks.bank_chunked
    python -m benchmarks.bank_chunked --sizes 100000 --chunks 0,16384 --planned ''   # quicker

One step of the objective and the gradient bank update (`configs/cifar10.py`'s
objective: SqrtKL, the gradient rule) at batch B, d = 128:
  - timed on one device for each N in --sizes and C in --chunks (0: the
    unchunked fused pass), chunked and unchunked alternating for --rounds
    rounds of --repeats calls (median round), so machine noise hits both;
  - planned only (compiled, not run) for each N in --planned, sharded over
    --devices fake CPU devices: XLA's temporaries per device.
Writes `<--out>.json` ({"rows": [{N, batch, devices, chunk_rows (null:
unchunked), seconds (null: planned only), temp_bytes}]}) and `.md`, after
every row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

GIB = 2 ** 30


def _objective(cfg, chunk: int, sharded: bool, axis_name=None):
  from ssl_jax import bank_objective, chunked_bank, sharded_bank

  def step(z, bank, idx):
    if chunk:
      return chunked_bank.loss_and_transition(z, bank, idx, cfg, chunk_rows=chunk,
                                              axis_name=axis_name)
    if sharded:
      return sharded_bank.loss_and_transition(z, bank, idx, cfg, num_examples=cfg.num_examples,
                                              axis_name=axis_name)
    return bank_objective.fused_loss_and_transition(z, bank, idx, cfg, None)
  return step


def timed_rows(n: int, batch: int, chunks: list[int], repeats: int, rounds: int,
               d: int = 128) -> list[dict]:
  import jax
  import numpy as np
  from ssl_jax import bank as bank_lib
  from ssl_jax import bank_objective
  cfg = bank_objective.BankMethodConfig(fused=True, bank_lr=0.5 * batch * 0.1)
  key = jax.random.PRNGKey(0)
  bank = bank_lib.random_bank(key, n, d)
  z = bank_lib.random_bank(jax.random.fold_in(key, 1), batch, d)
  idx = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, n)
  compiled = {c: jax.jit(_objective(cfg, c, False), donate_argnums=(1,))
              .lower(z, bank, idx).compile() for c in chunks}
  first = {c: jax.tree_util.tree_map(np.asarray, f(z, jax.numpy.array(bank), idx))
           for c, f in compiled.items()}
  base = jax.tree_util.tree_leaves(first[chunks[0]])
  times = {c: [] for c in chunks}
  for _ in range(rounds):
    for c, f in compiled.items():
      _, _, bank = f(z, bank, idx)
      jax.block_until_ready(bank)
      t = time.perf_counter()
      for _ in range(repeats):
        _, _, bank = f(z, bank, idx)
      jax.block_until_ready(bank)
      times[c].append((time.perf_counter() - t) / repeats)
  rows = []
  for c, f in compiled.items():
    diff = max(float(np.max(np.abs(a - b)))
               for a, b in zip(base, jax.tree_util.tree_leaves(first[c])))
    rows.append({"N": n, "batch": batch, "devices": 1, "chunk_rows": c or None,
                 "seconds": float(np.median(times[c])),
                 "temp_bytes": int(f.memory_analysis().temp_size_in_bytes),
                 "max_abs_diff_to_first": diff})
  return rows


def planned_row(n: int, batch: int, chunk: int, devices: int, d: int = 128) -> dict:
  import jax
  import jax.numpy as jnp
  from ssl_jax import bank_objective, devices as devices_lib, sharded_bank
  cfg = bank_objective.BankMethodConfig(sharded=True, num_examples=n, bank_lr=0.5 * batch * 0.1)
  rows = sharded_bank.shard_rows(n, devices)
  b = batch // devices
  s = jax.ShapeDtypeStruct
  fn = jax.pmap(_objective(cfg, chunk, True, devices_lib.AXIS), axis_name=devices_lib.AXIS,
                donate_argnums=(1,))
  compiled = fn.lower(s((devices, b, d), jnp.float32), s((devices, rows, d), jnp.float32),
                      s((devices, b), jnp.int32)).compile()
  return {"N": n, "batch": batch, "devices": devices, "chunk_rows": chunk or None,
          "seconds": None, "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
          "argument_bytes": int(compiled.memory_analysis().argument_size_in_bytes)}


def markdown(results: dict) -> str:
  lines = [f"# Bank pass with and without chunks (`{results['command']}`)", "",
           results["environment"], "",
           "| N | batch | devices | chunk rows | seconds per step | temporaries GiB |",
           "|---:|---:|---:|---:|---:|---:|"]
  for r in results["rows"]:
    secs = f"{r['seconds']:.3f}" if r["seconds"] is not None else "planned only"
    lines.append(f"| {r['N']:,} | {r['batch']} | {r['devices']} | "
                 f"{r['chunk_rows'] or 'unchunked'} | {secs} | {r['temp_bytes'] / GIB:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="100000,1281167", help="N timed on one device.")
  ap.add_argument("--chunks", default="0,16384,65536", help="C values; 0 is unchunked.")
  ap.add_argument("--planned", default="10000000", help="N compiled only, sharded.")
  ap.add_argument("--planned_chunk", type=int, default=65536)
  ap.add_argument("--devices", type=int, default=8)
  ap.add_argument("--batch", type=int, default=512)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/bank_chunked")
  args = ap.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  import jax
  from ssl_jax import devices, storage
  results = {"command": "python -m benchmarks.bank_chunked " + " ".join(sys.argv[1:]),
             "environment": f"jax {jax.__version__}, {devices.processor_name()}, "
                            f"{os.cpu_count()} cores, {datetime.date.today().isoformat()}",
             "rows": []}

  def save(rows):
    results["rows"].extend(rows)
    for r in rows:
      print(r, flush=True)
    storage.write_json_atomic(args.out + ".json", results)
    storage.write_text_atomic(args.out + ".md", markdown(results))

  chunks = [int(c) for c in args.chunks.split(",") if c]
  for n in [int(x) for x in args.sizes.split(",") if x]:
    save(timed_rows(n, args.batch, chunks, args.repeats, args.rounds))
  for n in [int(x) for x in args.planned.split(",") if x]:
    for c in (0, args.planned_chunk):
      save([planned_row(n, args.batch, c, args.devices)])
  print(f"wrote {args.out}.json and {args.out}.md")


if __name__ == "__main__":
  main()
