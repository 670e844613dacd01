"""A sweep's variants: names and `field=value` overrides, checked against the base config.

A variant's overrides are ml-collections field assignments, written as on
the command line without `--config.`, separated by spaces (so no spaces
inside a value): `"loss.kl_weight=0.5 augment.crop_scale=(0.08,1.0)"`.
`method=npid` is applied first through `configs.default.set_method` (which
sets that method's defining fields); the other assignments follow it.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import re
from typing import Any, Sequence

import ml_collections

from configs import default
from ssl_jax import methods

_NAME = re.compile(r"^[A-Za-z0-9_.=+-]+$")


class SweepError(ValueError):
  """A sweep config or a run directory that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Variant:
  """One point of a sweep: a name and its field assignments (in order)."""
  name: str
  overrides: tuple[tuple[str, Any], ...]

  def get(self, field: str, default_value: Any = None) -> Any:
    return dict(self.overrides).get(field, default_value)


def _field(config: ml_collections.ConfigDict, dotted: str):
  node = config
  *path, leaf = dotted.split(".")
  for part in path:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise SweepError(f"config has no field {dotted!r} (no section {part!r}).")
    node = node[part]
  if leaf not in node:
    raise SweepError(f"config has no field {dotted!r}.")
  return node, leaf


def parse_value(text: str, current: Any) -> Any:
  """Converts `text` to the type of the field's current value, as config flags do."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false"):
      raise SweepError(f"expected true or false, got {text!r}.")
    return text.lower() == "true"
  if isinstance(current, str) or current is None:
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise SweepError(f"cannot read {text!r} as a {type(current).__name__}.") from e
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if not isinstance(value, type(current)):
    raise SweepError(f"{text!r} is a {type(value).__name__}, the field holds a "
                     f"{type(current).__name__}.")
  return value


def parse_variants(spec: Sequence[Sequence[str]],
                   base: ml_collections.ConfigDict) -> list[Variant]:
  """Reads config.variants, checking every name, field and value against `base`."""
  variants, names = [], set()
  for entry in spec:
    if len(entry) != 2:
      raise SweepError(f"a variant is (name, 'field=value ...'), got {entry!r}.")
    name, text = entry
    if not _NAME.match(name):
      raise SweepError(f"variant name {name!r} is not a folder name "
                       f"(letters, digits and _ . = + - only).")
    if name in names:
      raise SweepError(f"variant {name!r} appears twice.")
    names.add(name)
    overrides = []
    for item in text.split():
      field, sep, value = item.partition("=")
      if not sep:
        raise SweepError(f"variant {name!r}: {item!r} is not field=value.")
      if field == "method":
        if value not in methods.names():
          raise SweepError(f"variant {name!r}: method must be one of {list(methods.names())}, "
                           f"got {value!r}.")
        overrides.append((field, value))
        continue
      node, leaf = _field(base, field)
      try:
        overrides.append((field, parse_value(value, node[leaf])))
      except SweepError as e:
        raise SweepError(f"variant {name!r}, field {field}: {e}") from None
    variants.append(Variant(name, tuple(overrides)))
  if not variants:
    raise SweepError("config.variants is empty.")
  return variants


def variant_config(base: ml_collections.ConfigDict, variant: Variant,
                   seed: int) -> ml_collections.ConfigDict:
  """The training config of one run: base, then the method, then the overrides, then seed."""
  config = copy.deepcopy(base)
  config.unlock()
  method = variant.get("method")
  if method is not None:
    config = default.set_method(config, method)
  for field, value in variant.overrides:
    if field != "method":
      node, leaf = _field(config, field)
      node[leaf] = value
  config.seed = seed
  return config
