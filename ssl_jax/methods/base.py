"""The method interface and its registry.

A method is everything that makes one training objective different from
another: the config fields that define it, its model options (heads), what
it adds to the train state, its pure step, whether it keeps a memory bank and
how many views of an image a step encodes. The rest of the package (data,
augmentation, encoder, optimizer, loop, checkpoints, evaluation) is shared and
asks the registry, never a method's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ssl_jax.state import TrainState
from ssl_jax.steps import StepContext, StepFn


def _nothing(config) -> None:
  del config


def _plain_model(config) -> dict:
  del config
  return {"normalize": True, "predictor_hidden": 0}


def _no_extra(state: TrainState) -> Any:
  del state
  return {}


@dataclasses.dataclass(frozen=True)
class Method:
  """One training objective, as the shared training system sees it.

  name: the value of config.method that selects it.
  summary: one line for listings and error messages.
  make_step: StepContext -> the pure step `(state, batch) -> (state, metric
    sums)`; sums hold at least 'loss' (see `steps.metric_sums`).
  uses_bank: whether state.bank is an [N, d] memory bank (initialised per
    config.bank.init before the first step); otherwise a [1, d] placeholder.
  num_views: augmented views of each image a step encodes (for cost
    accounting: a two-view step encodes 2b images per b).
  configure: sets the config fields that define the method (called by
    `configs/default.py` when the method is chosen; the rest stays shared).
  model_options: config -> extra keyword arguments of `models.create_encoder`
    (`normalize`, `predictor_hidden`).
  init_extra: the fresh state -> the method's own state in `state.extra`
    (checkpointed with the rest).
  validate: raises ValueError naming the field for a config the method cannot
    run (called before anything is read or compiled).
  classifier: whether the projection head is a classifier (z[:, c] is class
    c's logit): the final evaluation then adds `classifier_top1`.
  """
  name: str
  summary: str
  make_step: Callable[[StepContext], StepFn]
  uses_bank: bool = False
  num_views: int = 1
  configure: Callable[[Any], None] = _nothing
  model_options: Callable[[Any], dict] = _plain_model
  init_extra: Callable[[TrainState], Any] = _no_extra
  validate: Callable[[Any], None] = _nothing
  classifier: bool = False


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` under `method.name` (replacing one of that name); returns it."""
  if not method.name or not isinstance(method.name, str):
    raise ValueError(f"a method needs a non-empty name, got {method.name!r}.")
  _REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  """Removes a registered method (tests that register a toy one clean up with it)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """Every registered method's name, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Method:
  """The method registered as `name`; ValueError listing the others if there is none."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"config.method must be one of {list(_REGISTRY)}, got {name!r}.") from None
