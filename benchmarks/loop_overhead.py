"""What the training loop costs per step beyond the step's own work, pmap against mesh.

    python -m benchmarks.loop_overhead                       # 2 processes x 4 CPU devices
    python -m benchmarks.loop_overhead --processes 1 2 4     # and how it grows with processes

Each setting starts P processes on this machine, joined through
jax.distributed (gloo), each with --devices fake CPU devices. Every process
holds the replicated state of a ResNet-50 run of the method "ours" (the real
leaves: params, BatchNorm statistics, SGD momentum; 25.6M parameters) and
calls a step that does almost nothing with it: the state passes through
(donated), the step counter advances, and the batch's mean and the stop flag
are summed over every device, as the real step's collectives are. So the
time per step is the loop's overhead alone: mapping the call, converting and
placing its arguments, and any host sync.

Rows:
- pmap_before: the loop as it was: pmap; each step also sums every
  process's stop flag (a second all-reduce), and the previous step's flag
  is read on the host every step; host batches handed to pmap (no prefetch
  with several processes);
- pmap / mesh: the loop now (`config.parallel`): the step has only its own
  collective, batches are prefetched to the devices, and the processes
  gather their stop flags every 10 steps (`config.preemption_check_steps`);
- pmap_check_every_step / mesh_check_every_step: the same, gathering the
  flags at every step (the cost of a host sync per step);
- mesh_without_collective: mesh with the batch averaged on each device only:
  the loop without any cross-process all-reduce (which a real step needs for
  its gradients anyway), to show what the collective itself costs here.

Rounds alternate the rows; each row's figure is its median round. Writes
`<--out>.json` ({"settings": {P: {"rows": {NAME: {"ms_per_step": ...}},
"ratio_mesh_to_pmap": ...}}, and at top level the 2-process setting's rows
and ratio) and `.md`. ratio_mesh_to_pmap is mesh over pmap_before.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Optional

import numpy as np

ROWS = {  # name: (parallel, stop flag summed in the step, agree every this many steps,
          #        prefetch, the batch averaged over every device)
    "pmap_before": ("pmap", True, 1, False, True),
    "pmap": ("pmap", False, 10, True, True),
    "mesh": ("mesh", False, 10, True, True),
    "pmap_check_every_step": ("pmap", False, 1, True, True),
    "mesh_check_every_step": ("mesh", False, 1, True, True),
    "mesh_without_collective": ("mesh", False, 10, True, False),
}


def _host_state(config):
  from ssl_jax import builders
  model = builders.build_model(config)
  _, tx = builders.build_optimizer(config, 100)
  return builders.initial_state(config, model, tx, 4096)


def _time_row(name: str, config, state, steps: int, warmup: int, nd: int) -> float:
  """Seconds per step of `steps` loop iterations of row `name`, from a host state."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import multihost_utils
  from ssl_jax import builders, devices, mapping

  parallel, flag_in_step, check_every, prefetch, collective = ROWS[name]

  def step(state, *args):
    batch = args[-1]
    mean = jnp.mean(batch["image"].astype(jnp.float32))
    if collective:
      mean = jax.lax.pmean(mean, devices.AXIS)
    out = (state.replace(step=state.step + 1), {"mean": mean})
    return (*out, jax.lax.psum(args[0], devices.AXIS)) if flag_in_step else out
  fn = mapping.map_step(step, parallel)
  state = builders.place_state(config, state)   # donated: each row places its own
  if parallel == "mesh":
    state = mapping.to_global(state)
  rng = np.random.default_rng(0)
  host = [{"image": rng.integers(0, 255, (nd, 2, 32, 32, 3), dtype=np.uint8)}
          for _ in range(4)]
  batches = (host[t % 4] for t in range(warmup + steps))
  put = mapping.to_global if parallel == "mesh" else devices.place   # as ssl_jax.inputs does
  batches = devices.prefetch(batches, 2, put) if prefetch else batches
  flag = np.zeros((nd,), np.float32)
  flags = (None, None)
  for t, batch in enumerate(batches):
    if t == warmup:
      jax.block_until_ready(state)
      multihost_utils.sync_global_devices(f"start {name}")
      t0 = time.perf_counter()
    if flag_in_step:   # the old Loop.stop_agreed: the previous step's psum'd flag
      state, _, f = fn(state, flag, batch)
      flags = (flags[1], f)
      if flags[0] is not None:
        float(devices.local_rows(flags[0])[0])
    else:
      state, _ = fn(state, batch)
      if (t + 1) % check_every == 0:
        devices.any_process(False)   # what Loop.stop_agreed does now
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / steps


def worker(args) -> None:
  """One process of a setting: times every row, rounds alternating; process 0 prints JSON."""
  from ssl_jax import distributed
  distributed.initialize()
  import jax
  from configs import default
  from ssl_jax import devices
  config = default.get_config("ours")
  config.model.name, config.model.width, config.data.image_size = args.model, 1.0, 32
  nd = jax.local_device_count()
  state = _host_state(config)
  leaves = len(jax.tree_util.tree_leaves(state))
  times = {name: [] for name in ROWS}
  for _ in range(args.rounds):
    for name in ROWS:
      times[name].append(_time_row(name, config, state, args.steps, args.warmup, nd))
  if jax.process_index() == 0:
    print("RESULT " + json.dumps({
        "processes": jax.process_count(), "devices": jax.device_count(), "state_leaves": leaves,
        "rows": {n: {"ms_per_step": 1e3 * statistics.median(t),
                     "rounds_ms": [round(1e3 * s, 2) for s in t]} for n, t in times.items()},
        "platform": devices.describe()}), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_setting(processes: int, args) -> dict:
  port = _free_port()
  procs = []
  for pid in range(processes):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}",
               PYTHONPATH=os.getcwd())
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(pid))
    cmd = [sys.executable, "-m", "benchmarks.loop_overhead", "--worker", f"--model={args.model}",
           f"--steps={args.steps}", f"--warmup={args.warmup}", f"--rounds={args.rounds}"]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=3600)[0] for p in procs]
  for p, out in zip(procs, outs):
    if p.returncode:
      raise SystemExit(f"a worker of the {processes}-process setting failed:\n{out[-3000:]}")
  line = next(l for l in outs[0].splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  rows = result["rows"]
  result["ratio_mesh_to_pmap"] = rows["mesh"]["ms_per_step"] / rows["pmap_before"]["ms_per_step"]
  return result


def predict(settings: dict, hosts=(16, 64)) -> Optional[dict]:
  """A least-squares line a + b P through each row's ms/step over the process counts
  measured (at least 3), evaluated at `hosts`: {"slope_ms_per_process": ..., NAME: {P: ms}}.

  On one machine the processes share its cores, so b mixes the collectives'
  cost per process with CPU contention: an upper bound for hosts with cores
  of their own. What carries over is the ratio of the slopes.
  """
  if len(settings) < 3:
    return None
  ps = np.array([int(p) for p in settings], float)
  out = {"hosts": list(hosts), "rows": {}}
  for name in ("pmap_before", "mesh"):
    ms = np.array([settings[p]["rows"][name]["ms_per_step"] for p in settings])
    b, a = np.polyfit(ps, ms, 1)
    out["rows"][name] = {"intercept_ms": a, "ms_per_process": b,
                         **{str(h): a + b * h for h in hosts}}
  out["ratio_mesh_to_pmap"] = {str(h): out["rows"]["mesh"][str(h)]
                               / out["rows"]["pmap_before"][str(h)] for h in hosts}
  return out


def markdown(results: dict) -> str:
  lines = [f"# Loop overhead per step (`{results['command']}`)", "", results["environment"], "",
           f"A {results['model']} state (ours, SGD; "
           f"{next(iter(results['settings'].values()))['state_leaves']} leaves) passes through a step that only "
           "advances the counter and averages the batch over every device: milliseconds per "
           "step are the loop's own cost. Median of alternating rounds. Rows: see "
           "`benchmarks/loop_overhead.py`.", ""]
  names = list(ROWS)
  lines += ["| processes x devices | " + " | ".join(names) + " | mesh / pmap_before |",
            "|---" * (len(names) + 2) + "|"]
  for p, s in sorted(results["settings"].items(), key=lambda kv: int(kv[0])):
    lines.append(f"| {p} x {s['devices'] // s['processes']} | "
                 + " | ".join(f"{s['rows'][n]['ms_per_step']:.1f}" for n in names)
                 + f" | {s['ratio_mesh_to_pmap']:.2f} |")
  if pred := results.get("prediction"):
    hosts = pred["hosts"]
    lines += ["", "Predicted from a least-squares line in the process count (`predict`: an upper "
              "bound, the processes here share 2 cores):", "",
              "| row | ms per added process | " + " | ".join(f"{h} hosts (ms)" for h in hosts)
              + " |", "|---|---:|" + "---:|" * len(hosts)]
    for name, r in pred["rows"].items():
      lines.append(f"| {name} | {r['ms_per_process']:.1f} | "
                   + " | ".join(f"{r[str(h)]:.0f}" for h in hosts) + " |")
    lines.append("| mesh / pmap_before | | " + " | ".join(
        f"{pred['ratio_mesh_to_pmap'][str(h)]:.2f}" for h in hosts) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--processes", type=int, nargs="+", default=[2])
  ap.add_argument("--devices", type=int, default=4, help="Fake CPU devices per process.")
  ap.add_argument("--model", default="resnet50", help="The backbone whose state is carried.")
  ap.add_argument("--steps", type=int, default=30)
  ap.add_argument("--warmup", type=int, default=5)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/loop_overhead")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    return worker(args)
  import jax
  from ssl_jax import devices, storage
  results = {"command": "python -m benchmarks.loop_overhead " + " ".join(sys.argv[1:]),
             "environment": f"jax {jax.__version__}, {devices.processor_name()}, "
                            f"{os.cpu_count()} cores, {datetime.date.today().isoformat()}",
             "model": args.model, "settings": {}}
  for p in args.processes:
    results["settings"][str(p)] = run_setting(p, args)
    print(json.dumps({p: {n: round(r["ms_per_step"], 2) for n, r in
                          results["settings"][str(p)]["rows"].items()}}), flush=True)
    main_setting = results["settings"].get("2") or results["settings"][str(args.processes[0])]
    results.update(rows=main_setting["rows"], ratio_mesh_to_pmap=main_setting["ratio_mesh_to_pmap"],
                   prediction=predict(results["settings"]))
    storage.write_json_atomic(args.out + ".json", results)
    storage.write_text_atomic(args.out + ".md", markdown(results))


if __name__ == "__main__":
  main()
