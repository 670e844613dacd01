"""Our CPU train step beside PyTorch's on the same network, batch, images and optimizer.

    pip install ".[peer]"      # torch, torchvision, lightly
    python -m benchmarks.peer  # about 10 minutes on 2 cores

The network is ResNet-18 with the CIFAR stem (3x3 convolution, stride 1, no
max-pool) at full width, batch 128 of 32 x 32 images, float32, one process,
SGD (momentum 0.9, weight decay 5e-4). The sides, each in a worker process
of its own that builds its step once and then times it on request:

- jax_simclr: our SimCLR step (`ssl_jax.methods.simclr`), MLP head
  512-2048-128, NT-Xent at temperature 0.2;
- torch_simclr: lightly's SimCLR recipe: torchvision's resnet18 with the CIFAR
  stem, `lightly.models.modules.SimCLRProjectionHead(512, 2048, 128)`,
  `lightly.loss.NTXentLoss(temperature=0.2)`, one forward per view (as
  lightly's examples do; ours forwards both views as one batch, the same FLOPs);
- jax_ours: our method (`ours`, one view, the bank of CIFAR-10's 50,000 rows
  with the fused pass and the MLP head of configs/cifar10.py, in float32);
- jax_plain / torch_plain: the same ResNet-18 doing a plain forward and
  backward of 256 images (two views' worth) through a linear classifier with
  cross-entropy, and the SGD update: the framework without the recipe.

Step alone: every side takes views already augmented (float32), so data
loading and augmentation (about 1% of the step on both sides) are left out.
Rounds run the sides one after another (A B A B ...), only one at a time, all
workers pinned to the same cores with one thread per core (`--threads`: torch
`set_num_threads`; XLA:CPU sizes its pool from the cores the process may
use). Each side's figure is its median round; ratios are taken per round
(pairs measured back to back) and their median reported. Images per
CPU-second count the process's CPU time over the timed steps, so they hold
when other jobs share the machine. Peak memory is the worker's maximum
resident set.

Writes `<--out>.json` (rows per side, `ratio_simclr_jax_to_torch`: jax_simclr
over torch_simclr images/s, `ratio_ours_to_torch_simclr`,
`ratio_plain_jax_to_torch`) and `.md`. Skips with one line where torch,
torchvision or lightly is missing; the tests do not need them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks import peer_ops

SIDES = ("jax_simclr", "torch_simclr", "jax_ours", "jax_plain", "torch_plain")
BATCH, SIZE, N_BANK = 128, 32, 50_000


def missing_peer() -> list[str]:
  return [m for m in ("torch", "torchvision", "lightly") if importlib.util.find_spec(m) is None]


# ---------------------------------------------------------------------------- jax side
def _jax_step(side: str):
  """(step, state, inputs) of a jax side; `step(state, inputs) -> (state, out)` jitted."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from configs import default
  from ssl_jax import builders, models

  rng = np.random.default_rng(0)
  views = rng.random((2, BATCH, SIZE, SIZE, 3), dtype=np.float32)
  if side == "jax_plain":
    backbone = models.create_encoder("resnet18", stem="cifar", width=1.0).backbone
    x = jnp.asarray(views.reshape(2 * BATCH, SIZE, SIZE, 3))
    labels = jnp.asarray(rng.integers(0, 10, 2 * BATCH))
    variables = backbone.init(jax.random.PRNGKey(0), x[:2], train=True)
    params = {"backbone": variables["params"],
              "fc": {"w": jnp.zeros((512, 10)), "b": jnp.zeros((10,))}}
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    state = (params, variables["batch_stats"], tx.init(params))

    def step(state, inputs):
      params, stats, opt = state

      def loss_fn(p):
        h, upd = backbone.apply({"params": p["backbone"], "batch_stats": stats}, inputs[0],
                                train=True, mutable=["batch_stats"])
        logits = h @ p["fc"]["w"] + p["fc"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, inputs[1]).mean(), upd
      (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), upd["batch_stats"], opt), loss
    return jax.jit(step, donate_argnums=(0,)), state, (x, labels)

  method = {"jax_simclr": "simclr", "jax_ours": "ours"}[side]
  config = default.get_config(method)
  config.model.name, config.model.width, config.model.stem = "resnet18", 1.0, "cifar"
  config.model.dtype, config.model.head, config.model.head_hidden = "float32", "mlp", 2048
  config.model.embed_dim, config.batch_size, config.data.image_size = 128, BATCH, SIZE
  config.simclr.temperature = 0.2
  config.bank.fused = True
  n = N_BANK if method == "ours" else BATCH
  model = builders.build_model(config, bn_axis_name=None)
  _, tx = builders.build_optimizer(config, n // BATCH)
  state = builders.initial_state(config, model, tx, n)
  step_fn = builders.make_train_step(config, model, tx, 10_000, n, axis_name=None)
  index = jnp.asarray(rng.choice(n, BATCH, replace=False).astype(np.int32))
  inputs = ({"views": jnp.asarray(views), "index": index} if method == "simclr"
            else {"image": jnp.asarray(views[0]), "index": index})
  return jax.jit(step_fn, donate_argnums=(0,)), state, inputs


# -------------------------------------------------------------------------- torch side
def _torch_step(side: str, threads: int):
  import torch
  import torchvision

  torch.manual_seed(0)
  torch.set_num_threads(threads)
  resnet = torchvision.models.resnet18()
  resnet.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)   # the CIFAR stem
  resnet.maxpool = torch.nn.Identity()
  resnet.fc = torch.nn.Identity()
  views = torch.rand(2, BATCH, 3, SIZE, SIZE)
  if side == "torch_plain":
    model = torch.nn.Sequential(resnet, torch.nn.Linear(512, 10))
    x, labels = views.reshape(2 * BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (2 * BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    crit = torch.nn.CrossEntropyLoss()

    def step():
      loss = crit(model(x), labels)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      return loss
    return step
  from lightly.loss import NTXentLoss
  from lightly.models.modules import SimCLRProjectionHead
  head = SimCLRProjectionHead(512, 2048, 128)
  model = torch.nn.Sequential(resnet, head)
  opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
  crit = NTXentLoss(temperature=0.2)

  def step():
    loss = crit(model(views[0]), model(views[1]))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss
  return step


def worker(side: str, threads: int) -> None:
  """Builds `side`'s step, warms it up, then answers 'run STEPS' lines with one JSON line."""
  builders = {"jax_parts": peer_ops.jax_parts, "jax_ops": peer_ops.jax_ops,
              "torch_parts": lambda: peer_ops.torch_parts(threads),
              "torch_ops": lambda: peer_ops.torch_ops(threads)}
  if side in builders:
    parts = builders[side]()
    for f in parts.values():
      f()
    print("READY", flush=True)
    for line in sys.stdin:
      reps, out = int(line.split()[1]), {}
      for name, f in parts.items():
        t = time.perf_counter()
        for _ in range(reps):
          f()
        out[name] = 1e3 * (time.perf_counter() - t) / reps
      print(json.dumps(out), flush=True)
    return
  if side.startswith("jax"):
    import jax
    step, state, inputs = _jax_step(side)
    for _ in range(3):
      state, out = step(state, inputs)
    jax.block_until_ready(out)

    def run(steps):
      nonlocal state
      for _ in range(steps):
        state, out = step(state, inputs)
      jax.block_until_ready(out)
    threads_used = f"XLA:CPU pool over {len(os.sched_getaffinity(0))} cores"
  else:
    import torch
    step = _torch_step(side, threads)
    for _ in range(3):
      step()

    def run(steps):
      for _ in range(steps):
        step()
    threads_used = f"torch {torch.get_num_threads()} intra-op threads"
  print("READY", flush=True)
  for line in sys.stdin:
    steps = int(line.split()[1])
    wall, cpu = time.perf_counter(), time.process_time()
    run(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"images_per_second": BATCH * steps / wall,
                      "images_per_cpu_second": BATCH * steps / cpu, "step_ms": 1e3 * wall / steps,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "threads": threads_used}), flush=True)


def _start(side: str, threads: int, cpus: set[int], xla_flags: str = "") -> subprocess.Popen:
  env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.getcwd())
  env.pop("XLA_FLAGS", None)   # one CPU device, as a user's laptop has
  if xla_flags and side.startswith("jax"):
    env["XLA_FLAGS"] = xla_flags
  return subprocess.Popen(
      [sys.executable, "-m", "benchmarks.peer", "--worker", side, f"--threads={threads}"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
      preexec_fn=lambda: os.sched_setaffinity(0, cpus))


def markdown(r: dict) -> str:
  lines = [f"# Our CPU step beside PyTorch's (`{r['command']}`)", "", r["environment"], "",
           "ResNet-18 (CIFAR stem), batch 128 of 32 x 32 images, float32, SGD, one process, "
           "step alone (views made beforehand). Median of alternating rounds; see "
           "`benchmarks/peer.py` for what each side runs.", "",
           "| side | images/s | images per CPU-second | step ms | peak memory GiB | threads |",
           "|---|---:|---:|---:|---:|---|"]
  for side, row in r["rows"].items():
    lines.append(f"| {side} | {row['images_per_second']:.1f} | "
                 f"{row['images_per_cpu_second']:.1f} | {row['step_ms']:.0f} | "
                 f"{row['peak_rss_bytes'] / 2**30:.2f} | {row['threads']} |")
  lines += ["", "| ratio (per round, median) | value | rounds |", "|---|---:|---|"]
  for key in ("ratio_simclr_jax_to_torch", "ratio_ours_to_torch_simclr",
              "ratio_plain_jax_to_torch"):
    if key not in r:
      continue
    lines.append(f"| {key} | {r[key]:.2f} | {', '.join(f'{x:.2f}' for x in r[key + '_rounds'])} |")
  if parts := r.get("parts"):
    lines += ["", "Where the time goes (each part timed alone; jax / torch is torch ms over jax "
              "ms, so below 1 means jax is slower):", "",
              "| part | jax ms | torch ms | jax / torch |", "|---|---:|---:|---:|"]
    for part, row in parts.items():
      lines.append(f"| {part} | {row['jax_ms']:.1f} | {row['torch_ms']:.1f} | "
                   f"{row['ratio_jax_to_torch']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=5, help="Timed steps per side per round.")
  ap.add_argument("--threads", type=int, default=0, help="Threads per side (0: one per core).")
  ap.add_argument("--sides", default=",".join(SIDES))
  ap.add_argument("--part_rounds", type=int, default=3,
                  help="Rounds timing the step's parts on both sides (0: none).")
  ap.add_argument("--part_reps", type=int, default=3)
  ap.add_argument("--xla_flags", default="",
                  help="XLA_FLAGS of the jax workers (e.g. --xla_cpu_use_xnnpack=true).")
  ap.add_argument("--out", default="benchmarks/results/peer_cpu")
  ap.add_argument("--worker", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  cpus = os.sched_getaffinity(0)
  threads = args.threads or len(cpus)
  if args.worker:
    return worker(args.worker, threads)
  if missing := missing_peer():
    print(f"benchmarks.peer: skipped: {', '.join(missing)} not installed "
          f"(pip install \".[peer]\")")
    return
  import jax
  import torch
  import lightly
  from ssl_jax import devices, storage
  sides = [s for s in args.sides.split(",") if s]
  procs = {s: _start(s, threads, cpus, args.xla_flags) for s in sides}
  for s, p in procs.items():   # built and warmed up one after another
    if p.stdout.readline().strip() != "READY":
      raise SystemExit(f"benchmarks.peer: the {s} worker failed (run it with --worker {s})")
  results = {"command": "python -m benchmarks.peer " + " ".join(sys.argv[1:]),
             "environment": f"jax {jax.__version__}, torch {torch.__version__}, lightly "
                            f"{lightly.__version__}, {devices.processor_name()}, {len(cpus)} "
                            f"cores, {threads} threads per side, "
                            + (f"XLA_FLAGS={args.xla_flags!r}, " if args.xla_flags else "") +
                            f"{datetime.date.today().isoformat()}",
             "rounds": []}
  for i in range(args.rounds):
    measured = {}
    for s in sides:
      procs[s].stdin.write(f"run {args.steps}\n")
      procs[s].stdin.flush()
      measured[s] = json.loads(procs[s].stdout.readline())
    results["rounds"].append(measured)
    print(f"round {i + 1}: " + ", ".join(f"{s} {m['images_per_second']:.1f} img/s"
                                         for s, m in measured.items()), flush=True)
  for p in procs.values():
    p.stdin.close()
    p.wait()
  rounds = results["rounds"]
  results["rows"] = {s: {k: (statistics.median(r[s][k] for r in rounds) if k != "threads"
                             else rounds[0][s][k]) for k in rounds[0][s]} for s in sides}
  for key, (a, b) in {"ratio_simclr_jax_to_torch": ("jax_simclr", "torch_simclr"),
                      "ratio_ours_to_torch_simclr": ("jax_ours", "torch_simclr"),
                      "ratio_plain_jax_to_torch": ("jax_plain", "torch_plain")}.items():
    if a in sides and b in sides:
      per = [r[a]["images_per_second"] / r[b]["images_per_second"] for r in rounds]
      results[key], results[key + "_rounds"] = statistics.median(per), per
  if args.part_rounds:
    results["parts"] = time_parts(threads, cpus, args.part_rounds, args.part_reps,
                                  args.xla_flags)
  storage.write_json_atomic(args.out + ".json", results)
  storage.write_text_atomic(args.out + ".md", markdown(results))
  print(markdown(results))


def time_parts(threads: int, cpus: set[int], rounds: int, reps: int, xla_flags: str = "",
               sides: tuple = ("jax_parts", "torch_parts"),
               names: tuple = peer_ops.PARTS) -> dict:
  """Milliseconds of each part in `names` on both `sides` (jax first; median of alternating
  rounds), and jax's speed relative to torch's per part (torch ms / jax ms)."""
  procs = {s: _start(s, threads, cpus, xla_flags) for s in sides}
  for s, p in procs.items():
    if p.stdout.readline().strip() != "READY":
      raise SystemExit(f"benchmarks.peer: the {s} worker failed (run it with --worker {s})")
  measured = {s: [] for s in procs}
  for _ in range(rounds):
    for s, p in procs.items():
      p.stdin.write(f"run {reps}\n")
      p.stdin.flush()
      measured[s].append(json.loads(p.stdout.readline()))
  for p in procs.values():
    p.stdin.close()
    p.wait()
  out = {}
  for part in names:
    j = statistics.median(r[part] for r in measured[sides[0]])
    t = statistics.median(r[part] for r in measured[sides[1]])
    out[part] = {"jax_ms": j, "torch_ms": t, "ratio_jax_to_torch": t / j}
  return out


if __name__ == "__main__":
  main()
