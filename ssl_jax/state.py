"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; checkpoints save it whole.

  step: int32 scalar, optimizer steps taken (also positions the data order).
  params, batch_stats: the encoder's variables.
  opt_state: optax state.
  bank: [N, d] memory bank (float32, or config.bank.dtype), unit rows, replicated on every device
    (with config.bank.sharded, device k holds its [ceil(N / D), d] rows)
    (an unused [1, d] placeholder for methods without a bank).
  rng: uint32 [2] base key; step t uses fold_in(rng, t).
  extra: the method's own state ({} for the bank methods; BYOL's EMA target
    network as {'params', 'batch_stats'}).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  bank: jax.Array
  rng: jax.Array
  extra: Any = flax.struct.field(default_factory=dict)


def create_train_state(model, tx, rng: jax.Array, image_shape: tuple[int, ...],
                       bank: jax.Array) -> TrainState:
  """Initialises the encoder's variables and the optimizer around a given bank."""
  variables = _init_variables(model, rng, tuple(image_shape))
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=jax.jit(tx.init)(params), bank=bank,
                    rng=jax.random.fold_in(rng, 1))


# Compiled, not run op by op: eager, every initializer of every layer is its
# own dispatch, which took 9-10 s per process for a ResNet-10 on 2 CPU cores,
# against one compile of about 6 s that the persistent compilation cache then
# serves in under a second (flax modules hash by their fields, so equal models
# share the compiled function within a process too).
@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_variables(model, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
  # Initialise through BYOL's predictor too where the model has one.
  return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False,
                    with_prediction=model.predictor_hidden > 0)
