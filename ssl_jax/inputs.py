"""The training loop's input side: one epoch's step inputs, and what they cost the loop.

Three ways a step gets its images, all in the order `data.epoch_indices`
fixes (a pure function of seed, epoch and step, so resuming needs no
iterator state):
  - memory: batches of a decoded split, prefetched to the devices;
  - resident (`data.on_device`): the epoch's index table, the split already
    on the devices (`resident_split`; `check_resident_fits` refuses a split
    that would crowd out the run);
  - stream (`data.stream`): records decoded per step by Grain's workers
    (`ssl_jax.stream`), prefetched to the devices.
`EpochInput` counts the seconds the loop waited for its next input, so a run
shows when the host, not the step, sets the pace.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import jax
import numpy as np

from ssl_jax import data as data_lib
from ssl_jax import devices
from ssl_jax import mapping
from ssl_jax import methods
from ssl_jax.run_config import ConfigError


def pipeline_name(config) -> str:
  """'stream', 'resident' or 'memory': how this run's training images reach the step."""
  if config.data.get("stream", False):
    return "stream"
  return "resident" if config.data.get("on_device", False) else "memory"


class EpochInput:
  """The step inputs of the rest of one epoch: iterates tuples of step arguments.

  wait_seconds: time the loop spent blocked waiting for the next input.
  For a stream, `stream.bad` and `stream.decode_seconds` say what the
  workers replaced and how long they decoded.
  """

  def __init__(self, items: Iterable[tuple], stream=None, workers: int = 0):
    self._items, self.stream, self.workers = items, stream, workers
    self.wait_seconds = 0.0

  def __iter__(self) -> Iterator[tuple]:
    it = iter(self._items)
    while True:
      t0 = time.perf_counter()
      try:
        item = next(it)
      except StopIteration:
        return
      self.wait_seconds += time.perf_counter() - t0
      yield item

  def record(self, images: int, seconds: float) -> dict:
    """The epoch record's input fields for `images` trained on in `seconds`."""
    out = {"input_wait_seconds": self.wait_seconds,
           "input_wait_fraction": self.wait_seconds / seconds if seconds > 0 else 0.0}
    if self.stream is not None and self.stream.decode_seconds > 0:
      # What the pool can decode: images (all their views) per decode-second,
      # times the workers decoding at once (1 for this process's threads).
      out["input_images_per_second"] = (images * max(self.workers, 1)
                                        / self.stream.decode_seconds)
      out["corrupt_records"] = self.stream.bad
    return out


RESIDENT_SHARE = 0.5


def resident_rows(layout: data_lib.Layout) -> int:
  """Rows of the split `resident_split` puts on each device: the largest process's share."""
  return max(hi - lo for lo, hi in map(layout.process_bounds, range(layout.process_count)))


def resident_bytes(train: data_lib.Split) -> int:
  """Bytes of training images `resident_split` puts on each device."""
  return resident_rows(train.layout) * train.images[:1].nbytes


def check_resident_fits(train: data_lib.Split) -> None:
  """Refuses data.on_device before anything is compiled if the split would crowd out the run."""
  limit, need = devices.memory_limit_bytes(), resident_bytes(train)
  if limit is not None and need > RESIDENT_SHARE * limit:
    raise ConfigError(
        f"config.data.on_device=True would keep {need / 2**20:,.1f} MiB of training images on "
        f"each device, more than {RESIDENT_SHARE:.0%} of its {limit / 2**20:,.1f} MiB; leave it "
        f"False (the streaming pipeline) or lower config.data.image_size.")


def resident_split(train: data_lib.Split) -> jax.Array:
  """This process's training rows on each of its devices: uint8 [D, n, H, W, 3].

  Processes hold different row counts (shards differ by up to one row), but
  a pmapped input has one shape on every device of every process, so each
  pads to the largest share; the padding is never indexed.
  """
  images = np.zeros((resident_rows(train.layout), *train.images.shape[1:]), train.images.dtype)
  images[:len(train)] = train.images
  return devices.replicate(images)


def check_indices(train: data_lib.Split, config, nd: int, epoch: int) -> None:
  """Refuses an epoch whose instance indices leave [0, N) before a step runs on them.

  Under jit an index outside the bank gives a NaN loss or a silently wrong
  bank update (`ssl_jax.checked` says which), so the loop checks the index
  table of its first epoch on the host once (every epoch is a permutation
  of the same instances).
  """
  table = data_lib.epoch_indices(train.layout, global_batch=int(config.batch_size),
                                 num_local_devices=nd, seed=config.seed, epoch=epoch)
  if table.size and (table.min() < 0 or table.max() >= train.num_examples):
    raise data_lib.DataError(
        f"instance indices of epoch {epoch} span [{table.min()}, {table.max()}], outside the "
        f"bank's rows [0, {train.num_examples}); the split's layout is inconsistent.")


def epoch_inputs(config, train: data_lib.Split, *, epoch: int, start: int, step: int,
                 resident, host_augment, nd: int) -> EpochInput:
  """The step inputs of epoch `epoch` from its step `start` on (global step `step`)."""
  # Straight to the mapped step's layout: global arrays for config.parallel="mesh".
  put = mapping.to_global if config.get("parallel", "pmap") == "mesh" else devices.place
  depth = int(config.data.get("prefetch", 2))  # batches on the devices ahead of the step
  if resident is not None:
    # One transfer of the epoch's indices [D, steps, b]; no per-step host work.
    ids = np.swapaxes(data_lib.epoch_indices(
        train.layout, global_batch=int(config.batch_size), num_local_devices=nd,
        seed=config.seed, epoch=epoch), 0, 1)
    table = put({"index": ids, "row": ids - np.int32(train.offset)})
    spe = data_lib.steps_per_epoch(train.num_examples, int(config.batch_size),
                                   train.layout.num_shards)
    return EpochInput((table, resident) for _ in range(start, spe))
  if config.data.get("stream", False):
    from ssl_jax import stream as stream_lib  # Grain: imported only for streaming runs
    a = config.augment
    stream = stream_lib.TrainStream(
        train, global_batch=int(config.batch_size), num_local_devices=nd, seed=config.seed,
        epoch=epoch, start_step=start, views=methods.get(config.method).num_views,
        scale=tuple(a.crop_scale), ratio=tuple(a.get("crop_ratio", (3 / 4, 4 / 3))),
        decoder=config.data.get("decoder", "pillow"))
    return EpochInput(((b,) for b in devices.prefetch(stream, depth, put)), stream,
                      train.images.workers)
  batches = data_lib.train_batches(
      train, global_batch=int(config.batch_size), num_local_devices=nd, seed=config.seed,
      epoch=epoch, start_step=start)
  batches = ({"image": b["image"], "index": b["index"]} for b in batches)
  if host_augment is not None:
    batches = (host_augment(b, s) for s, b in enumerate(batches, step))
  return EpochInput((b,) for b in devices.prefetch(batches, depth, put))
