"""Training compute: FLOPs of a train step, and runs planned to a FLOP budget.

`config.train_flops` > 0 makes a run take as many whole epochs as fit the
budget, counting each step's FLOPs with `counted_flops` (the count the
benchmarks report): XLA:CPU's cost analysis of the lowered step, the
network's arithmetic before a backend rewrites it. It is always counted on the
host's CPU backend, whatever the run's devices, because the accelerators' counts
are not the network's: JAX gives no cost analysis of a lowered program on a
PJRT plugin (the CUDA one included), and the compiled GPU program's
convolutions are cuDNN custom calls that XLA counts as 0 FLOPs. On an H200
(2026-12-04, experiments/gpu.sh) the compiled count of a ResNet-18 w1 train
step at batch 512 was 0.031 GFLOP per image, about 1/95 of the network's, so a
budget counted there weighted the methods by their heads and losses.
Likewise XLA:CPU's compiled count turns the weight gradient of a depthwise
convolution into a dense one: 5.3x the lowered count of a MobileNetV2 w1/2
step (984 against 186 MFLOP per image for forward and backward), where
ResNet-18 and ViT-Ti agree within 1%. The learning rate schedule, its warmup
and BYOL's EMA schedule are then planned over exactly those epochs, so every
method gets a complete schedule inside the same budget: "equal compute"
rather than "equal epochs".

The plan is kept in `<workdir>/flops_plan.json`: a resumed run takes the same
number of epochs even where another jax version would count the FLOPs a little
differently.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Optional

import jax
import numpy as np

from ssl_jax import builders
from ssl_jax import data as data_lib
from ssl_jax import decoders
from ssl_jax import devices
from ssl_jax import methods
from ssl_jax import storage
from ssl_jax.run_config import ConfigError

PLAN_FILE = "flops_plan.json"


def cost_flops(program: Any) -> Optional[float]:
  """FLOPs of one device's program (a jax `Lowered` or `Compiled`) from XLA's cost
  analysis, or None where the backend gives none."""
  try:
    cost = program.cost_analysis()
  except Exception:  # noqa: BLE001  not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def model_flops(lowered: Any) -> Optional[float]:
  """The network's FLOPs of one device's program: XLA's count of the lowered
  program (before the backend's rewrites), else of the compiled one."""
  return cost_flops(lowered) or cost_flops(lowered.compile())


def counted_flops(fn: Callable[..., Any], *stacked: Any) -> Optional[float]:
  """FLOPs of one call of the pmapped `fn`, summed over its devices.

  `stacked` are its per-device arguments (arrays or `jax.ShapeDtypeStruct`s
  with a leading device axis [D, ...]); nothing is allocated or run. `fn` is
  vmapped over that axis under the collectives' axis name (`devices.AXIS`, so
  `psum` and `all_gather` see all D entries as pmap's devices would) and
  lowered for the host's CPU backend, whose count of the lowered program is the
  network's arithmetic on every kind of device (see the module docstring).
  Where no CPU backend is loaded (`JAX_PLATFORMS` without cpu) the pmapped
  program is counted on the default backend instead, D times one device's count.
  """
  try:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  except RuntimeError:  # no CPU backend loaded
    d = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    per_device = model_flops(jax.pmap(fn, axis_name=devices.AXIS).lower(*stacked))
    return per_device * d if per_device else None
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), stacked)
  return cost_flops(jax.jit(jax.vmap(fn, axis_name=devices.AXIS)).lower(*abstract))


def abstract_state(config, model, tx, num_examples: int, local_devices: int,
                   global_devices: int) -> Any:
  """The per-device train state [D_local, ...] as shapes only (nothing is allocated):
  every leaf replicated, a sharded bank [D_local, ceil(N / D_global), d]."""
  state = jax.eval_shape(lambda: builders.initial_state(config, model, tx, num_examples))
  stacked = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((local_devices, *x.shape), x.dtype), state)
  if builders.is_sharded(config):
    rows = -(-num_examples // global_devices)
    stacked = stacked.replace(bank=jax.ShapeDtypeStruct(
        (local_devices, rows, state.bank.shape[1]), state.bank.dtype))
  return stacked


def abstract_stream_batch(config, local_devices: int, global_devices: int) -> dict:
  """A streamed batch's shapes: one host crop per view, uint8 [D, b, (V,) S, S, 3] and
  int32 index [D, b] (ssl_jax.stream); with decoder "simplejpeg", window canvases of
  2S a side and their float32 'box' [D, b, (V,) 4], which the step resizes."""
  b = int(config.batch_size) // global_devices
  views = methods.get(config.method).num_views
  lead = (local_devices, b) + ((views,) if views > 1 else ())
  decoder = config.data.get("decoder", "pillow")
  c = decoders.canvas_size(int(config.data.image_size), decoder)
  batch = {"image": jax.ShapeDtypeStruct(lead + (c, c, 3), np.uint8),
           "index": jax.ShapeDtypeStruct((local_devices, b), np.int32)}
  if decoder == "simplejpeg":
    batch["box"] = jax.ShapeDtypeStruct(lead + (4,), np.float32)
  return batch


def step_flops(config, train: data_lib.Split, steps_per_epoch: int) -> float:
  """FLOPs of one global train step of `config`, over every device of every process.

  The step is counted (`counted_flops`) for abstract arguments of the shapes
  the loop feeds it, with one entry per device of the whole run (no state is
  allocated), so SimCLR's gathered negatives and a sharded bank's logits count
  at their real sizes. Augmentation counts where it runs on the device (the
  default); host augmentation (`augment.on_device=False`) is not counted. The
  device-resident gather (`data.on_device`) adds no FLOPs that matter and is
  not counted.
  """
  nd, total = jax.local_device_count(), jax.device_count()
  model = builders.build_model(config)
  _, tx = builders.build_optimizer(config, steps_per_epoch)
  stacked = abstract_state(config, model, tx, train.num_examples, total, total)
  if config.data.get("stream", False):
    batch = abstract_stream_batch(config, nd, total)
  else:
    batch = next(data_lib.train_batches(train, global_batch=int(config.batch_size),
                                        num_local_devices=nd, seed=config.seed, epoch=0))
    batch = {"image": batch["image"], "index": batch["index"]}
  if not config.augment.on_device:
    batch = builders.make_host_augment(builders.augment_config(config),
                                       np.zeros(2, np.uint32))(batch, 0)
  # This process's batch has its nd devices' entries; every device's is the same shape.
  inputs = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct((total, *x.shape[1:]), x.dtype), batch)
  step_fn = builders.make_train_step(config, model, tx, steps_per_epoch * config.num_epochs,
                                     train.num_examples)
  flops = counted_flops(step_fn, stacked, inputs)
  if not flops:
    raise ConfigError("config.train_flops needs XLA's cost analysis, which this backend "
                      f"({jax.devices()[0].platform}) does not give; set num_epochs instead.")
  return flops


def plan(config, train: data_lib.Split, steps_per_epoch: int, workdir: str,
         log=print) -> tuple[Any, dict]:
  """(config with num_epochs planned to config.train_flops, the plan) or (config, {}) when off.

  The plan: train_flops (the budget used: whole epochs only), train_flops_budget,
  flops_per_step, flops_per_image, epochs.
  """
  budget = float(config.get("train_flops", 0) or 0)
  if budget <= 0:
    return config, {}
  path = storage.join(workdir, PLAN_FILE)
  saved = storage.read_json(path) if storage.exists(path) else None
  if saved and saved.get("train_flops_budget") == budget:
    per_step = float(saved["flops_per_step"])
    log(f"FLOP budget {budget:.4g}: the plan in {path}")
  else:
    log(f"FLOP budget {budget:.4g}: counting the step's FLOPs (one compilation)...")
    per_step = step_flops(config, train, steps_per_epoch)
  per_epoch = per_step * steps_per_epoch
  epochs = int(math.floor(budget / per_epoch * (1 + 1e-9)))  # a budget of exactly k epochs
  if epochs < 1:
    raise ConfigError(f"config.train_flops ({budget:.4g}) does not cover one epoch "
                      f"({per_epoch:.4g} FLOPs: {steps_per_epoch} steps of {per_step:.4g}).")
  result = {"train_flops": epochs * per_epoch, "train_flops_budget": budget,
            "flops_per_step": per_step, "flops_per_image": per_step / int(config.batch_size),
            "epochs": epochs}
  if jax.process_index() == 0:
    storage.write_json_atomic(path, result)
  log(f"FLOP budget {budget:.4g}: {epochs} epochs of {per_epoch:.4g} FLOPs "
      f"({result['flops_per_image']:.4g} per image), {result['train_flops']:.4g} used")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.num_epochs = epochs
  return config, result
