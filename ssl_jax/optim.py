"""Optimizers from optax: SGD with momentum, LARS or AdamW; cosine schedule with warmup."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "lars", "adamw")


def _decay_mask(params):
  # Weight decay (and LARS trust ratios) on the conv and dense kernels only: not
  # on biases (attention's are 2-d), norms, a ViT's position embedding or class
  # token. For the convnets this is exactly the leaves of more than one dimension.
  return jax.tree_util.tree_map_with_path(
      lambda path, p: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(optim_cfg, global_batch: int, steps_per_epoch: int,
                           num_epochs: int) -> optax.Schedule:
  """Linear warmup (optim.warmup_epochs) to base_lr * global_batch / 256, then cosine to 0."""
  peak = optim_cfg.base_lr * global_batch / 256.0
  total_steps = steps_per_epoch * num_epochs
  warmup = min(int(round(optim_cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1))


def create_optimizer(optim_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD(momentum, nesterov off) with weight decay on kernels, LARS, or AdamW.

  AdamW (the ViTs' usual optimizer, `models.Backbone.optim`) takes optax's
  betas (0.9, 0.999) and decays kernels only; optim.momentum is unused there.
  """
  name = optim_cfg.name
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=optim_cfg.momentum))
  if name == "lars":
    return optax.lars(schedule, weight_decay=optim_cfg.weight_decay,
                      weight_decay_mask=_decay_mask, trust_ratio_mask=_decay_mask,
                      momentum=optim_cfg.momentum)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=optim_cfg.weight_decay, mask=_decay_mask)
  raise ValueError(f"config.optim.name must be one of {OPTIMIZERS}, got {name!r}.")
