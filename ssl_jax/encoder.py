"""The trained encoder, for use after training: load, preprocess, embed, export.

    encoder = ssl_jax.load_encoder("runs/quickstart")        # a workdir, or
    encoder = ssl_jax.load_encoder("model.msgpack")          # an export
    h, z = encoder.embed(images)        # uint8 [B, S, S, 3] -> NumPy [B, D_h], [B, d]
    h, z = jax.jit(encoder.apply_fn)(encoder.variables, images)   # inside your own jit

Only what inference needs is read: parameters and BatchNorm statistics (no
bank, no optimizer state), as host arrays, so a checkpoint written on a GPU
or TPU loads on a CPU. An export (`python -m ssl_jax.export`) is one msgpack
file (flax serialization) holding those variables and the run's config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import flax.serialization
import jax
import ml_collections
import numpy as np

from ssl_jax import augment
from ssl_jax import builders
from ssl_jax import devices
from ssl_jax import evaluate
from ssl_jax import run_files
from ssl_jax import sources
from ssl_jax import storage
from ssl_jax.checkpoint import CheckpointError, leaf_specs, structure_difference

# The export file's format; a file of another format is refused with both named.
EXPORT_FORMAT = "ssl_jax.encoder/1"


class EncoderError(ValueError):
  """A workdir or export that holds no usable encoder (one line, names the path)."""


def preprocess(image: Any, size: int) -> np.ndarray:
  """The evaluation transform of any image: uint8 [size, size, 3].

  `image` is a PIL image or an array [H, W], [H, W, C] (uint8, or 16-bit or
  float scaled to its range) of any size and mode. EXIF orientation is
  applied, every mode is converted to RGB, the short side is resized to
  `size` and the centre cropped: what training's decoder does to every image.
  """
  return sources.to_rgb_array(sources.as_pil(image), size, "image")


@dataclasses.dataclass
class Encoder:
  """A trained backbone and projection head, ready to embed images.

  config: the run's config; variables: {'params', 'batch_stats'} (host
  arrays); apply_fn(variables, uint8 images [B, S, S, 3]) -> (h [B, D_h],
  z [B, d]): pure, for use inside a `jax.jit` of your own; step: the
  training step the weights come from.
  """
  config: ml_collections.ConfigDict = dataclasses.field(repr=False)
  variables: dict = dataclasses.field(repr=False)
  apply_fn: Callable[[dict, jax.Array], tuple[jax.Array, jax.Array]] = dataclasses.field(
      repr=False)
  step: int = 0
  _embed: Optional[Callable] = dataclasses.field(default=None, repr=False)
  _replicated: Any = dataclasses.field(default=None, repr=False)

  def __repr__(self) -> str:
    m = self.config.model
    return (f"Encoder({self.config.method}, {m.name} width {m.width}, step {self.step}, "
            f"images {self.image_size}x{self.image_size})")

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  def preprocess(self, image: Any) -> np.ndarray:
    """`ssl_jax.preprocess` at this encoder's image size."""
    return preprocess(image, self.image_size)

  def embed(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [B, S, S, 3] -> (h [B, D_h], z [B, d]) float32 NumPy, over all local devices.

    The same function evaluation uses (`evaluate.make_embed_fn`), so the
    features equal those `python -m ssl_jax.evaluate` computes.
    """
    images = np.asarray(images)
    size = self.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
      raise ValueError(f"embed takes uint8 images [B, {size}, {size}, 3], got {images.dtype} "
                       f"{list(images.shape)}; `encoder.preprocess(image)` makes one.")
    nd = jax.local_device_count()
    per_device = max(1, -(-min(batch_size, max(len(images), 1)) // nd))
    if self._embed is None:
      self._embed = evaluate.make_embed_fn(builders.build_model(self.config),
                                           builders.augment_config(self.config))
      self._replicated = devices.replicate(self.variables)
    hs, zs = [], []
    chunk = per_device * nd
    for start in range(0, len(images), chunk):
      x = images[start:start + chunk]
      n = len(x)
      if n < chunk:  # padded to one shape: one compilation
        x = np.concatenate([x, np.repeat(x[:1], chunk - n, axis=0)])
      h, z = self._embed(self._replicated, x.reshape(nd, per_device, size, size, 3),
                         np.ones((nd, per_device), bool))
      hs.append(np.asarray(h).reshape(chunk, -1)[:n])
      zs.append(np.asarray(z).reshape(chunk, -1)[:n])
    if not hs:
      return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(hs), np.concatenate(zs)


def _apply_fn(config) -> Callable:
  model = builders.build_model(config, bn_axis_name=None)
  aug_cfg = builders.augment_config(config)

  def apply_fn(variables, images):
    return model.apply(variables, augment.preprocess_eval(images, aug_cfg), train=False)
  return apply_fn


def _expected_specs(config) -> dict:
  """leaf_specs of {'params', 'batch_stats'} of the model `config` builds."""
  model = builders.build_model(config, bn_axis_name=None)
  size = int(config.data.image_size)
  # Through BYOL's predictor too, as training initialises it: a BYOL checkpoint holds it.
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             np.zeros((1, size, size, 3), np.float32),
                                             train=False,
                                             with_prediction=model.predictor_hidden > 0))
  return leaf_specs({"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})})


def _check_structure(variables: dict, config, source: str) -> None:
  difference = structure_difference(leaf_specs(variables), _expected_specs(config))
  if difference is not None:
    raise EncoderError(f"{source} holds weights of another model than its config builds "
                       f"({difference}); was it written by another version of ssl_jax?")


def checkpoint_path(workdir: str, step: Optional[int]) -> tuple[ml_collections.ConfigDict, int,
                                                                str]:
  """(the run's config, the step, the absolute path orbax reads) of a workdir's checkpoint
  at `step` (default: the latest committed one); EncoderError naming what is missing."""
  import orbax.checkpoint as ocp
  config = run_files.load_run_config(workdir)  # FileNotFoundError naming config.json
  folder = storage.join(workdir, "checkpoints")
  # Committed steps only (orbax's own test: no temporary folder, and on an
  # object store the commit marker), so a save in progress is never picked.
  steps = sorted(ocp.utils.checkpoint_steps(storage.absolute(folder)))
  if not steps:
    raise EncoderError(f"{workdir} has no checkpoint yet (no {folder}/<step>): train first, "
                       f"or let the run reach its first checkpoint.")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise EncoderError(f"{workdir} has no checkpoint at step {step} (it has {steps}).")
  return config, step, storage.absolute(storage.join(folder, str(step), "default"))


def restore_parts(path: str, keys: Optional[tuple[str, ...]] = None) -> dict:
  """{key: the TrainState field `key` as host arrays} of the checkpoint at `path`; the
  rest (optimizer state, bank, ...) is not read (keys None: every field).
  Needs no devices and reads a checkpoint any device count or process count
  wrote. A sharded run's bank keeps its zero padding rows past N
  (`mapping.to_saved`). CheckpointError if it cannot be read."""
  import orbax.checkpoint as ocp
  try:
    from etils import epath
    saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)).tree
    target = {k: jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), saved[k],
                                        is_leaf=lambda x: hasattr(x, "shape"))
              for k in (keys or tuple(saved))}
    # Partial restore into host arrays: no devices.
    return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
        item=target, partial_restore=True,
        restore_args=jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                            target)))
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    raise CheckpointError(f"checkpoint {path} cannot be read: "
                          f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")


def _from_workdir(workdir: str, step: Optional[int]) -> Encoder:
  config, step, path = checkpoint_path(workdir, step)
  variables = restore_parts(path, ("params", "batch_stats"))
  _check_structure(variables, config, f"checkpoint {path}")
  return Encoder(config, variables, _apply_fn(config), step)


def _from_export(path: str) -> Encoder:
  data = storage.read_bytes(path)
  try:
    payload = flax.serialization.msgpack_restore(data)
  except Exception:  # msgpack raises several types on foreign bytes
    payload = None
  if not isinstance(payload, dict) or "format" not in payload:
    raise EncoderError(f"{path} is neither a training workdir nor an ssl_jax export.")
  if payload["format"] != EXPORT_FORMAT:
    raise EncoderError(f"{path} is an export of format {payload['format']!r}; this version "
                       f"of ssl_jax reads {EXPORT_FORMAT!r}.")
  config = ml_collections.ConfigDict(json.loads(payload["config"]))
  variables = {"params": payload["variables"]["params"],
               "batch_stats": payload["variables"].get("batch_stats", {})}
  _check_structure(variables, config, path)
  return Encoder(config, variables, _apply_fn(config), int(payload["step"]))


def load_encoder(path: str, step: Optional[int] = None) -> Encoder:
  """The encoder of a training workdir (its latest checkpoint, or `step`) or of an export.

  Raises EncoderError (one line) for a path holding neither, a workdir
  without a checkpoint, an export of another format or a model that does
  not match its config; FileNotFoundError for a missing path.
  """
  path = os.fspath(path)
  if storage.path(path).is_dir():
    return _from_workdir(path, step)
  if storage.path(path).is_file():
    if step is not None:
      raise EncoderError(f"{path} is an export (one step); `step` applies to workdirs only.")
    return _from_export(path)
  raise FileNotFoundError(f"no training workdir or export at {path}.")


def export_bytes(encoder: Encoder) -> bytes:
  """The export file of an encoder: format, step, config (JSON) and variables (msgpack)."""
  return flax.serialization.msgpack_serialize({
      "format": EXPORT_FORMAT, "step": encoder.step,
      "config": encoder.config.to_json_best_effort(),
      "variables": jax.tree_util.tree_map(np.asarray, encoder.variables)})
