"""The benchmark suite: prints every number and writes `<config.results>.{json,md}`.

    python -m benchmarks.run --config benchmarks/config.py:cpu
    python -m benchmarks.run --config benchmarks/config.py:gpu

Measures, on the current device(s):
  peak     a large matmul in the model's dtype: the achievable FLOP/s that
           step FLOPs are compared with (not a datasheet figure);
  step     train-step images/s for every method x backbone x batch, with the
           on-device augmentation included and excluded (pre-made float
           views), compile time separately, model FLOPs per step from XLA's
           cost analysis, the achieved fraction of `peak`, and memory (XLA's
           buffer assignment, plus the allocator's peak where the backend
           reports it);
  bank     logits + loss + gradient bank update for N bank rows of d = 128:
           time and XLA memory per step (sizes over the memory limit skipped);
  input    the host pipeline alone: JPEG decode images/s and batch
           assembly images/s;
  epoch    one epoch of the real training loop with the streaming pipeline
           and with the split resident on the device (config.data.on_device).
"""

from __future__ import annotations

import copy
import datetime
import os
import platform
import sys
import time

from absl import app


def _log(*a):
  print(*a, flush=True)


def _block(tree):
  import jax
  return jax.block_until_ready(tree)


def _cost_flops(compiled) -> float | None:
  from ssl_jax import compute
  return compute.cost_flops(compiled)


def _memory_bytes(compiled) -> int | None:
  """Bytes XLA assigned to arguments, outputs and temporaries of one device's program."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - getattr(m, "alias_size_in_bytes", 0))


def matmul_peak(n: int, dtype: str, repeats: int = 10) -> dict:
  """FLOP/s of an n x n x n matmul in `dtype` on the first device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  _block(f(a, b))
  t = time.perf_counter()
  for _ in range(repeats):
    out = f(a, b)
  _block(out)
  dt = (time.perf_counter() - t) / repeats
  return {"n": n, "dtype": dtype, "seconds": dt, "flops_per_second": 2 * n ** 3 / dt}


def step_benchmark(base, method: str, model_name: str, width: float, batch: int,
                   augment: bool, cfg, peak: float) -> dict:
  """Images/s, compile time, FLOPs and memory of one pmapped train step."""
  import jax
  import numpy as np
  from configs import default
  from ssl_jax import augment as augment_lib
  from ssl_jax import builders, compute, devices, methods, optim, train

  config = default.set_method(copy.deepcopy(base), method)
  config.model.name, config.model.width = model_name, float(width)
  config.model.dtype = cfg.dtype
  config.batch_size = int(batch)
  nd = jax.local_device_count()
  b = batch // nd
  n = int(cfg.bank_rows)
  model = builders.build_model(config)
  tx = optim.create_optimizer(config.optim, optim.learning_rate_schedule(
      config.optim, batch, max(n // batch, 1), 100))
  state = builders.initial_state(config, model, tx, n)
  state = builders.place_state(config, state)
  step_fn = builders.make_train_step(config, model, tx, 10_000, n)
  p_step = jax.pmap(step_fn, axis_name=devices.AXIS, donate_argnums=(0,))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (nd, b, 32, 32, 3), dtype=np.uint8)
  index = rng.choice(n, size=(nd, b), replace=False).astype(np.int32)
  inputs = {"image": images, "index": index}
  if not augment:
    aug_cfg = builders.augment_config(config)
    aug = jax.jit(augment_lib.augment_batch, static_argnums=3)
    flat_img, flat_idx = images.reshape(-1, 32, 32, 3), index.reshape(-1)
    views = [np.asarray(aug(jax.random.PRNGKey(v), flat_img, flat_idx, aug_cfg))
             for v in (0, 1)]
    if methods.get(method).num_views == 1:
      inputs = {"image": views[0].reshape(nd, b, *views[0].shape[1:]), "index": index}
    else:
      inputs = {"views": np.stack(views, 1).reshape(nd, 2, b, *views[0].shape[1:]),
                "index": index}
  inputs = jax.tree_util.tree_map(devices.distribute, inputs)
  t = time.perf_counter()
  lowered = p_step.lower(state, inputs)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  # The network's arithmetic (XLA:CPU's count of the lowered step, the count
  # config.train_flops plans with, on every device kind) and what this backend's
  # compiled program counts (more where it rewrites an op densely; on a GPU far
  # less, its cuDNN convolutions counting 0: see ssl_jax/compute.py).
  flops = compute.counted_flops(step_fn, state, inputs)
  backend_flops = _cost_flops(compiled)
  memory = _memory_bytes(compiled)
  for _ in range(cfg.warmup_steps):
    state, sums = compiled(state, inputs)
  _block(sums)
  t = time.perf_counter()
  for _ in range(cfg.timed_steps):
    state, sums = compiled(state, inputs)
  _block(sums)
  dt = (time.perf_counter() - t) / cfg.timed_steps
  return {
      "method": method, "model": f"{model_name} w{width:g}", "batch": batch,
      "augment": "included" if augment else "excluded", "dtype": cfg.dtype,
      "images_per_second": batch / dt, "step_seconds": dt, "compile_seconds": compile_s,
      "flops_per_step": flops, "gflops_per_image": flops / batch / 1e9 if flops else None,
      "backend_gflops_per_image": backend_flops * nd / batch / 1e9 if backend_flops else None,
      "fraction_of_peak": (flops / dt) / (peak * nd) if flops and peak else None,
      "xla_memory_bytes_per_device": memory,
      "peak_memory_bytes": train.peak_memory_bytes()}


def bank_benchmark(n: int, d: int, batch: int, limit_gb: float, repeats: int = 5,
                   rounds: int = 3) -> dict:
  """One bank step (logits, loss, its gradient in z, gradient bank update) for N rows.

  Both ways the train step can take it: `autodiff` (jax.value_and_grad through
  the loss, then `bank_transition`, what config.bank.fused=False runs) and
  `fused` (`bank_objective.fused_loss_and_transition`, one softmax pass). The two
  alternate for `rounds` rounds of `repeats` calls; each reports its median
  round, so machine noise hits both alike.
  """
  import jax
  import numpy as np
  from ssl_jax import bank as bank_lib
  from ssl_jax import losses
  from ssl_jax import bank_objective
  # Bank, new bank, logits and their gradient are the big buffers (float32).
  estimate = 4 * (2 * n * d + 3 * batch * n)
  row = {"bank_rows": n, "dim": d, "batch": batch, "estimated_bytes": estimate,
         "bank_bytes": n * d * 4}
  if estimate > limit_gb * 2 ** 30:
    return {**row, "skipped": f"needs about {estimate / 2 ** 30:.1f} GiB > {limit_gb} GiB limit"}
  cfg = bank_objective.BankMethodConfig()

  def autodiff(z, bank, idx):
    def loss(z):
      s = losses.bank_logits(z, bank, cfg.temperature)
      return bank_objective.loss_from_logits(s, idx, cfg)[0], s
    (value, s), dz = jax.value_and_grad(loss, has_aux=True)(z)
    return value, dz, bank_objective.bank_transition(bank, z, s, idx, cfg, None)

  def fused(z, bank, idx):
    metrics, dz, new = bank_objective.fused_loss_and_transition(z, bank, idx, cfg, None)
    return metrics["loss"], dz, new

  key = jax.random.PRNGKey(0)
  bank = bank_lib.random_bank(key, n, d)
  z = bank_lib.random_bank(jax.random.fold_in(key, 1), batch, d)
  idx = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, n)
  paths = {"autodiff": autodiff, "fused": fused}
  compiled = {k: jax.jit(f, donate_argnums=(1,)).lower(z, bank, idx).compile()
              for k, f in paths.items()}
  outs = {}
  for k, f in compiled.items():
    outs[k] = jax.tree_util.tree_map(np.asarray, f(z, jax.numpy.array(bank), idx))
  row["fused_max_abs_diff"] = max(float(np.max(np.abs(a - b)))
                                  for a, b in zip(outs["autodiff"], outs["fused"]))
  times = {k: [] for k in paths}
  for _ in range(rounds):
    for k, f in compiled.items():
      _, _, bank = f(z, bank, idx)
      _block(bank)
      t = time.perf_counter()
      for _ in range(repeats):
        _, _, bank = f(z, bank, idx)
      _block(bank)
      times[k].append((time.perf_counter() - t) / repeats)
  for k in paths:
    prefix = "" if k == "autodiff" else "fused_"
    row[prefix + "step_ms"] = float(np.median(times[k])) * 1e3
    row[prefix + "xla_memory_bytes"] = _memory_bytes(compiled[k])
  return row


def input_benchmark(source: str, decode_images: int, batch: int) -> dict:
  """The host side alone: JPEG decoding, and batch assembly from the decoded split."""
  import ml_collections
  import numpy as np
  from ssl_jax import data as data_lib
  from ssl_jax import sources
  kind, path = data_lib.parse_source(source)
  out = {}
  if kind == "folder":
    t = time.perf_counter()
    part, _ = sources.decode_folder(path, "train", 32, False, lambda *a: None,
                                    keep=lambda n: np.arange(min(decode_images, n)))
    out["decode_images_per_second"] = len(part.images) / (time.perf_counter() - t)
  cfg = ml_collections.ConfigDict(dict(source=source, image_size=32,
                                       cache_dir="~/.cache/ssl_jax", skip_corrupt=False))
  split, _ = data_lib.load_split(cfg, "train", lambda *a: None)
  t = time.perf_counter()
  count = 0
  for b in data_lib.train_batches(split, global_batch=batch, num_local_devices=1, seed=0,
                                  epoch=0):
    count += b["image"].shape[0] * b["image"].shape[1]
  out["batch_images_per_second"] = count / (time.perf_counter() - t)
  out["batch"] = batch
  return out


def epoch_benchmark(base, source: str, num_images: int, workdir: str) -> dict:
  """Steady-state epoch images/s of the real loop: streaming vs device-resident data."""
  import jax
  from ssl_jax import train
  out = {}
  n_total = 50_000  # CIFAR-10's training split, the source this part is meant for
  for on_device in (False, True):
    config = copy.deepcopy(base)
    config.data.source = source
    config.data.fraction = min(1.0, num_images / n_total)
    config.data.test_fraction = 0.02
    config.data.on_device = on_device
    config.num_epochs = 2  # the first epoch (compilation) is left out of images/s
    config.eval.every_epochs = 0
    config.eval.linear_epochs = 1
    run = os.path.join(workdir, f"epoch_on_device_{on_device}")
    summary = train.train_and_evaluate(config, run)
    key = "device_resident" if on_device else "streaming"
    out[key] = summary["images_per_second"]
  out["ratio_resident_over_streaming"] = out["device_resident"] / out["streaming"]
  out["devices"] = jax.device_count()
  return out


def markdown(results: dict) -> str:
  env = results["environment"]
  lines = [f"# Benchmarks ({results['preset']})", "",
           f"Device: {env['device_kind']} x {env['device_count']} ({env['platform']}; "
           f"host {env.get('processor', 'unknown')}, {env.get('cpu_count', '?')} cores), "
           f"jax {env['jax']}, {env['date']}. Command: `{results['command']}`", ""]
  if results.get("complete") is False:
    lines += ["**Partial**: the run stopped before every part was measured (`\"complete\": "
              "false` in the JSON); the sections below hold what it had measured.", ""]
  if "peak" not in results:
    return "\n".join(lines) + "\n"
  lines += [f"Matmul peak ({results['peak']['dtype']}, n={results['peak']['n']}): "
           f"{results['peak']['flops_per_second'] / 1e12:.3f} TFLOP/s", "",
           "## Train step", "",
           "| method | model | batch | augment | images/s | step ms | compile s | GFLOP/image "
           "| compiled GFLOP/image | % of peak | XLA MiB/device |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda v, f: "n/a" if v is None else format(v, f)
  for r in results.get("steps", []):
    lines.append(
        f"| {r['method']} | {r['model']} | {r['batch']} | {r['augment']} | "
        f"{r['images_per_second']:,.0f} | {r['step_seconds'] * 1e3:.1f} | "
        f"{r['compile_seconds']:.1f} | {fmt(r['gflops_per_image'], '.3f')} | "
        f"{fmt(r.get('backend_gflops_per_image'), '.3f')} | "
        f"{fmt(r['fraction_of_peak'] and 100 * r['fraction_of_peak'], '.1f')} | "
        f"{fmt(r['xla_memory_bytes_per_device'] and r['xla_memory_bytes_per_device'] / 2**20, '.0f')} |")
  if results.get("ratios"):
    lines += ["", "Single-branch over SimCLR images/s (same model, batch, augmentation):", ""]
    lines += [f"- {k}: {v:.2f}x" for k, v in results["ratios"].items()]
  if "bank" not in results:
    return "\n".join(lines) + "\n"
  lines += ["", "## Bank cost (logits + loss + gradient in z + gradient update, one step)", "",
            "autodiff: value_and_grad through the loss, then the bank transition "
            "(`bank.fused=False`); fused: one softmax pass (`bank.fused=True`). Median of "
            "alternating rounds.", "",
            "| N | d | batch | autodiff ms | fused ms | fused speedup | bank MiB "
            "| autodiff XLA MiB | fused XLA MiB | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  mib = lambda v: fmt(v and v / 2**20, ".0f")
  for r in results["bank"]:
    if "skipped" in r:
      lines.append(f"| {r['bank_rows']:,} | {r['dim']} | {r['batch']} | skipped: "
                   f"{r['skipped']} | | | | | | |")
    else:
      lines.append(f"| {r['bank_rows']:,} | {r['dim']} | {r['batch']} | {r['step_ms']:.2f} | "
                   f"{r['fused_step_ms']:.2f} | {r['step_ms'] / r['fused_step_ms']:.2f}x | "
                   f"{r['bank_bytes'] / 2**20:.0f} | {mib(r['xla_memory_bytes'])} | "
                   f"{mib(r['fused_xla_memory_bytes'])} | {r['fused_max_abs_diff']:.1e} |")
  if "input" not in results:
    return "\n".join(lines) + "\n"
  i = results["input"]
  lines += ["", "## Input pipeline (host only)", ""]
  if "decode_images_per_second" in i:
    lines.append(f"- JPEG decode: {i['decode_images_per_second']:,.0f} images/s (one process)")
  lines.append(f"- batch assembly (batch {i['batch']}): {i['batch_images_per_second']:,.0f} images/s")
  e = results.get("epoch")
  if e:
    lines += ["", "## Whole epochs (the real loop, ours)", "",
              f"- streaming pipeline: {e['streaming']:,.0f} images/s",
              f"- split resident on the device: {e['device_resident']:,.0f} images/s "
              f"({e['ratio_resident_over_streaming']:.2f}x)"]
  return "\n".join(lines) + "\n"


def simclr_ratios(steps: list[dict]) -> dict[str, float]:
  """Single-branch over SimCLR images/s for every (model, batch, augment) both were run at."""
  ratios = {}
  for r in steps:
    if r["method"] != "ours":
      continue
    for s in steps:
      if (s["method"] == "simclr" and s["model"] == r["model"] and s["batch"] == r["batch"]
          and s["augment"] == r["augment"]):
        key = f"{r['model']} batch {r['batch']} augment {r['augment']}"
        ratios[key] = r["images_per_second"] / s["images_per_second"]
  return ratios


def write_results(results: dict, path: str) -> None:
  """<path>.json and <path>.md, each replaced whole (a stopped run leaves the last pair)."""
  from ssl_jax import storage
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  storage.write_json_atomic(path + ".json", results)
  storage.write_text_atomic(path + ".md", markdown(results))


def check_config(cfg, batch_size: int) -> None:
  """Stops a bad grid before the first (minutes-long) measurement, not after it."""
  if cfg.epoch_images and cfg.epoch_images < batch_size:
    raise ValueError(f"config.epoch_images ({cfg.epoch_images}) must be 0 (skip the epoch "
                     f"part) or at least the training batch ({batch_size}).")
  for row in cfg.grid:
    if len(row) != 5:
      raise ValueError(f"config.grid rows are (model, width, batch, methods, augment modes), "
                       f"got {row!r}.")


def main(argv) -> None:
  import jax
  from absl import flags, logging
  from configs import cifar10, default, quickstart
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  cfg = flags.FLAGS.config
  source = cfg.data_source or default.cifar10_source()[0]
  # The training recipe around the measured steps: the quickstart's on CPU,
  # configs/cifar10.py's (batch 512) on a GPU.
  base = (quickstart if cfg.preset in ("cpu", "smoke") else cifar10).get_config()
  base.unlock()
  base.data.source = source
  check_config(cfg, int(base.batch_size))
  from ssl_jax import devices
  t_all = time.time()
  dev = jax.devices()[0]
  results = {
      "preset": cfg.preset,
      "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
      "environment": {"platform": dev.platform, "device_kind": dev.device_kind,
                      "device_count": jax.device_count(), "jax": jax.__version__,
                      "host": platform.node(), "cpu_count": os.cpu_count(),
                      "processor": devices.processor_name(),
                      "date": datetime.date.today().isoformat()},
      "config": cfg.to_dict()}

  def save(complete: bool = False) -> None:
    # After every measurement: a run stopped by a time limit keeps what it measured.
    results["complete"] = complete
    results["wall_seconds"] = time.time() - t_all
    results["ratios"] = simclr_ratios(results.get("steps", []))
    write_results(results, cfg.results)

  _log(f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform})")
  results["peak"] = matmul_peak(cfg.matmul_size, cfg.dtype)
  peak = results["peak"]["flops_per_second"]
  _log(f"matmul peak {cfg.dtype}: {peak / 1e12:.3f} TFLOP/s")
  results["steps"] = []
  save()
  for model_name, width, batch, methods, augment_modes in cfg.grid:
    for method in methods:
      for aug in augment_modes:
        r = step_benchmark(base, method, model_name, width, int(batch), aug, cfg, peak)
        results["steps"].append(r)
        save()
        _log(f"step {method:6s} {r['model']:14s} batch {batch:5d} augment {r['augment']:8s}: "
             f"{r['images_per_second']:9,.0f} img/s, compile {r['compile_seconds']:.1f} s, "
             f"{r['gflops_per_image'] or 0:.3f} GFLOP/img, "
             f"{100 * (r['fraction_of_peak'] or 0):.1f}% of peak")
  results["bank"] = []
  for n in cfg.bank_sizes:
    r = bank_benchmark(int(n), int(cfg.bank_dim), int(cfg.bank_batch), cfg.bank_memory_limit_gb)
    results["bank"].append(r)
    save()
    _log(f"bank N={n:>10,}: " + (r["skipped"] if "skipped" in r else
                                   f"{r['step_ms']:.2f} ms/step autodiff, "
                                   f"{r['fused_step_ms']:.2f} fused"))
  results["input"] = input_benchmark(source, int(cfg.pipeline_decode_images),
                                     int(cfg.pipeline_batch))
  _log(f"input: {results['input']}")
  save()
  if cfg.epoch_images:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      results["epoch"] = epoch_benchmark(base, source, int(cfg.epoch_images), tmp)
    _log(f"epoch: {results['epoch']}")
  save(complete=True)
  _log(f"wrote {cfg.results}.json and {cfg.results}.md ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
  from ml_collections import config_flags
  # Defined here, not at import: tests import this module beside other CLIs.
  config_flags.DEFINE_config_file("config", None, "benchmarks/config.py:<preset>")
  from ssl_jax import cli
  app.run(main, flags_parser=cli.parse_flags)
