"""What each program of a run needs per device at its real shapes: compiled, never run.

    python -m benchmarks.scale --config configs/imagenet.py --devices 8,64

Compiles, on fake CPU devices, every program an ImageNet run executes, at its
real shapes (N = 1,281,167 training images, 1,000 classes, the config's
model, batch and image size), for each device count:

  train_step_<method>  the mapped train step of each method (config.parallel) (the config's
                       recipe with that method; a streamed batch);
  calibrate            the bank's calibration pass (one evaluation batch);
  knn                  one kNN query batch against the training features
                       (the backbone's h), split over the devices;
  linear_probe         one linear-probe epoch over the same features.

It writes `<--out>.json` and `.md` with, per program and device count, XLA's
buffer plan for one device (`compiled.memory_analysis()`: argument, output
and temporary bytes), its FLOPs (cost analysis) and the compile time. The
CPU backend plans float32 activations where a GPU would use bf16: the
figures are upper bounds until an accelerator measures them.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from absl import app, flags

_DEVICES = flags.DEFINE_string("devices", "8,64", "Device counts, comma-separated.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/scale_imagenet",
                           "Results path without extension (.json and .md are written).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 1_281_167, "Training images N.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classes of the labels.")
_METHODS = flags.DEFINE_string("methods", "ours,npid,simclr,byol",
                               "Methods whose train step is compiled.")
_PROGRAMS = flags.DEFINE_string("programs", "",
                                "Only these programs (comma-separated names); all by default.")

GIB = 2 ** 30


def _measure(fn, *args) -> dict:
  """Compile `fn` for the abstract `args`; its per-device buffer plan, FLOPs and time."""
  from ssl_jax import compute
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - t
  m = compiled.memory_analysis()
  return {"argument_bytes": int(m.argument_size_in_bytes),
          "output_bytes": int(m.output_size_in_bytes),
          "temp_bytes": int(m.temp_size_in_bytes),
          "alias_bytes": int(getattr(m, "alias_size_in_bytes", 0)),
          "flops": compute.cost_flops(compiled), "compile_seconds": seconds}


def programs(config, num_devices: int, num_train: int, num_classes: int,
             methods: list[str]) -> dict:
  """{name: (pmapped function, abstract arguments)} of one run on `num_devices` devices."""
  import copy

  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import default
  from ssl_jax import builders, compute, devices, evaluate, mapping, steps
  from ssl_jax.evaluate import linear

  struct = jax.ShapeDtypeStruct
  d = num_devices
  out = {}
  for method in methods:
    c = default.set_method(copy.deepcopy(config), method)
    model = builders.build_model(c)
    spe = max(num_train // int(c.batch_size), 1)
    _, tx = builders.build_optimizer(c, spe)
    state = compute.abstract_state(c, model, tx, num_train, d, d)
    step_fn = builders.make_train_step(c, model, tx, spe * c.num_epochs, num_train)
    # Mapped as the config says (config.parallel), over the first d devices.
    mapped = mapping.map_step(step_fn, c.get("parallel", "pmap"), jax.devices()[:d])
    out[f"train_step_{method}"] = (mapped,
                                   (state, compute.abstract_stream_batch(c, d, d)))

  model = builders.build_model(config)
  _, tx = builders.build_optimizer(config, 1)
  state = compute.abstract_state(config, model, tx, num_train, d, d)
  if config.get("parallel", "pmap") == "mesh":
    # What a mesh run's checkpoint copies on the devices: the state's saved form.
    sharding = devices.step_sharding(jax.devices()[:d])
    placed = jax.tree_util.tree_map(lambda x: struct(x.shape, x.dtype, sharding=sharding), state)
    out["save_layout"] = (mapping.layout_program(placed, builders.is_sharded(config), True),
                          (placed,))
  variables = steps.variables(state)
  s = int(config.data.image_size)
  b = max(1, int(config.eval.batch_size) // d)
  embed = evaluate.make_embed_fn(model, builders.augment_config(config),
                                 batch_norm=config.bank.calibrate_bn)
  out["calibrate"] = (embed, (variables, struct((d, b, s, s, 3), np.uint8),
                              struct((d, b), np.bool_)))
  h = jax.eval_shape(lambda v, x: embed(v, x, jnp.ones((d, b), bool))[0], variables,
                     struct((d, b, s, s, 3), np.uint8))
  dim = int(h.shape[-1])
  n = -(-num_train // d)
  feature_dtype = jnp.dtype(config.eval.get("feature_dtype", "float32"))
  rows = (struct((d, n, dim), feature_dtype), struct((d, n), np.int32), struct((d,), np.int32),
          struct((d,), np.int32))
  out["knn"] = (evaluate.knn_program(int(config.eval.knn_k), num_classes, n),
                (*rows, struct((d, n), np.float32),
                 struct((evaluate.QUERY_BATCH, dim), np.float32), struct((), np.float32)))
  e = config.eval
  batch = min(int(e.linear_batch_size), num_train)
  probe_tx, probe = linear.probe_program(num_train, batch, float(e.linear_lr),
                                         float(e.linear_weight_decay), int(e.linear_epochs))
  params = {"w": struct((dim, num_classes), np.float32), "b": struct((num_classes,), np.float32)}
  carry = jax.tree_util.tree_map(lambda x: struct((d, *x.shape), x.dtype),
                                 (params, jax.eval_shape(probe_tx.init, params)))
  moments = (struct((d, dim), np.float32),) * 2
  out["linear_probe"] = (probe, (*carry, struct((2,), np.uint32), *rows, *moments))
  return out


def markdown(results: dict) -> str:
  counts = results["device_counts"]
  lines = [f"# Per-device buffer plans at ImageNet shapes (`{results['command']}`)", "",
           f"{results['environment']}; N = {results['num_train']:,}, "
           f"{results['num_classes']} classes, compiled on CPU devices (not run). "
           "The CPU backend keeps float32 activations where a GPU uses bf16: upper bounds.", "",
           "| program | devices | arguments GiB | temporaries GiB | arguments + temporaries "
           "GiB | outputs GiB | GFLOP per device | compile s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for name, per_count in results["programs"].items():
    for count in counts:
      r = per_count.get(str(count))
      if r is None:
        continue
      flops = f"{r['flops'] / 1e9:,.1f}" if r.get("flops") else "-"
      lines.append(f"| {name} | {count} | {r['argument_bytes'] / GIB:.2f} | "
                   f"{r['temp_bytes'] / GIB:.2f} | "
                   f"{(r['argument_bytes'] + r['temp_bytes']) / GIB:.2f} | "
                   f"{r['output_bytes'] / GIB:.2f} | {flops} | {r['compile_seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv) -> None:
  del argv
  counts = [int(c) for c in _DEVICES.value.split(",") if c.strip()]
  # Before the backend starts: enough fake CPU devices for the largest count.
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={max(counts)}").strip()
  import jax
  from absl import logging
  from ssl_jax import devices, storage
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  methods = [m for m in _METHODS.value.split(",") if m]
  only = {p for p in _PROGRAMS.value.split(",") if p}
  if jax.device_count() < max(counts):
    raise SystemExit(f"error: {jax.device_count()} CPU devices, {max(counts)} needed: "
                     "start a fresh process (XLA_FLAGS is read once).")
  results = {"command": "python -m benchmarks.scale " + " ".join(sys.argv[1:]),
             "environment": f"jax {jax.__version__}, {devices.processor_name()}, "
                            f"{datetime.date.today().isoformat()}",
             "num_train": _NUM_TRAIN.value, "num_classes": _NUM_CLASSES.value,
             "device_counts": counts, "programs": {}}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  for count in counts:
    for name, (fn, args) in programs(config, count, _NUM_TRAIN.value, _NUM_CLASSES.value,
                                     methods).items():
      if only and name not in only:
        continue
      r = _measure(fn, *args)
      results["programs"].setdefault(name, {})[str(count)] = r
      print(f"{name:20s} {count:3d} devices: arguments {r['argument_bytes'] / GIB:6.2f} GiB, "
            f"temporaries {r['temp_bytes'] / GIB:6.2f} GiB, compiled in "
            f"{r['compile_seconds']:.1f} s", flush=True)
      # After every program: a stopped run keeps what it compiled.
      storage.write_json_atomic(_OUT.value + ".json", results)
      storage.write_text_atomic(_OUT.value + ".md", markdown(results))
  print(f"wrote {_OUT.value}.json and {_OUT.value}.md")


if __name__ == "__main__":
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/imagenet.py",
                                            "The run's config (e.g. configs/imagenet.py).")
  app.run(main)
