"""Supervised training: the backbone and a linear classifier, cross-entropy on the labels.

The reference row of every SSL table and, with `config.init_from`, the
fine-tuning protocol (SimCLR's semi-supervised table: fine-tune a pretrained
encoder on 1% or 10% of the labels, `config.data.label_fraction`). Same data,
augmentation (one view), optimizer, checkpoints and evaluation as the SSL
methods.

The classifier is the model's projection head, linear and unnormalised:
z [b, embed_dim] are logits, class c is z[:, c], so `config.model.embed_dim`
must be at least the number of classes (the run refuses in one line before
compiling otherwise). The labels of the training split, by instance index,
are a constant of the step, gathered on the device: every input path
(memory, resident, streamed) brings the batch's indices already. The final
evaluation adds `classifier_top1`, the head's test top-1, beside kNN and the
linear probe on h.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl_jax import augment
from ssl_jax import devices
from ssl_jax import steps
from ssl_jax.methods.base import Method
from ssl_jax.state import TrainState


def classifier_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of float logits [b, K] against int labels [b] in [0, K)."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def supervised_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
                    aug_cfg: augment.AugmentConfig, labels: jax.Array,
                    axis_name: Optional[str] = devices.AXIS) -> tuple[TrainState, dict]:
  """One step; same contract as `ssl_jax.methods.bank.bank_step`.

  batch: {'image': uint8 [b, H, W, 3] (one view), 'index': int32 [b]};
  labels: int32 [N], the training split's label of every instance.
  """
  idx = batch["index"]
  with jax.named_scope("augment"):
    x = augment.augment_batch(steps.step_key(state.rng, state.step), batch["image"], idx,
                              aug_cfg)
  y = jnp.take(labels, idx)

  def loss_fn(params):
    (_, logits), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                       train=True, mutable=["batch_stats"])
    return classifier_loss(logits, y), updates.get("batch_stats", {})

  return steps.loss_step(state, loss_fn, idx.shape[0], tx=tx, axis_name=axis_name)


def make_step(ctx: steps.StepContext) -> steps.StepFn:
  # Without labels (FLOP counting, the benchmarks) any labels give the same program,
  # but the table must still cover every index: jnp.take fills an index past its
  # end with INT_MIN, and the cross-entropy of that label is NaN, silently.
  if ctx.labels is None and ctx.num_examples <= 0:
    raise ValueError("the supervised method's step needs the training split's labels "
                     "(make_train_step(..., num_examples, labels=split.labels)), or at least "
                     "num_examples for a step that only counts FLOPs.")
  labels = (np.zeros(ctx.num_examples, np.int32) if ctx.labels is None
            else np.asarray(ctx.labels, np.int32))
  if ctx.labels is not None and labels.size and (
      labels.min() < 0 or labels.max() >= int(ctx.config.model.embed_dim)):
    raise ValueError(
        f"the supervised method needs labels in [0, config.model.embed_dim="
        f"{ctx.config.model.embed_dim}) (its classifier's outputs); the training split has "
        f"labels in [{labels.min()}, {labels.max()}]"
        + (" (-1: unlabelled data)" if labels.min() < 0 else
           "; set --config.model.embed_dim to the number of classes or more") + ".")
  return functools.partial(supervised_step, model=ctx.model, tx=ctx.tx, aug_cfg=ctx.aug_cfg,
                           labels=jnp.asarray(labels), axis_name=ctx.axis_name)


def configure(config) -> None:
  """A linear classifier head (its logits are not normalised: `model_options`)."""
  config.model.head = "linear"


def model_options(config) -> dict:
  del config
  return {"normalize": False, "predictor_hidden": 0}


def validate(config) -> None:
  if config.model.head != "linear":
    raise ValueError(f"the supervised method's classifier is a linear head: "
                     f"config.model.head must be 'linear', got {config.model.head!r}.")
  if jax.process_count() > 1:
    raise ValueError("the supervised method runs in one process for now (its label table "
                     "holds every instance's label); use one process with several devices.")


SUPERVISED = Method(
    name="supervised", summary="supervised reference: backbone and linear classifier, "
    "cross-entropy on the labels", make_step=make_step, configure=configure,
    model_options=model_options, validate=validate, classifier=True)
