"""Embed any images with a trained encoder:

    python -m ssl_jax.embed --workdir runs/quickstart --images folder:photos/ --out photos.npz
    python -m ssl_jax.embed --workdir model.msgpack --images tfds:cifar10:test --out test.npz

`folder:DIR` takes every image under DIR, recursively (DIR may also be a
.tar or .tar.gz archive); files that are not images (by extension) are
ignored and counted. Any mode and size is handled as training does
(`ssl_jax.preprocess`). The output .npz holds `h` [N, D_h] (backbone
features), `z` [N, d] (normalised projection), `paths` (relative to DIR),
`root`, `source`, `step`, `skipped`, `ignored`, and, where every image sits
at `<class>/<image>`, `labels` and `class_names`. An image that does not
decode stops the command with one line naming it and nothing written;
`--skip_corrupt` leaves it out and lists it (stderr and `skipped`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import tarfile
from typing import Callable, Iterator, Optional

import numpy as np

from ssl_jax import reporting
from ssl_jax import sources
from ssl_jax import storage
from ssl_jax.encoder import Encoder


@dataclasses.dataclass
class ImageSet:
  """The images of a `folder:` or `tfds:` spec, read lazily in batches."""
  source: str
  root: str
  paths: list[str]              # relative to root (tfds: the example's position)
  ignored: int                  # files that are not images
  read: Callable[[str], bytes]  # path -> encoded bytes (folders and archives)
  decoded: Optional[np.ndarray] = None   # tfds: the split, already decoded
  labels: Optional[np.ndarray] = None
  class_names: tuple = ()


def _is_image(name: str) -> bool:
  return name.lower().endswith(sources.IMAGE_EXTENSIONS)


def _labels(paths: list[str]) -> tuple[Optional[np.ndarray], tuple]:
  """Labels from a `<class>/<image>` tree (every path exactly two parts deep), else None."""
  parts = [pathlib.PurePosixPath(p).parts for p in paths]
  if not parts or any(len(p) != 2 for p in parts):
    return None, ()
  names = tuple(sorted({p[0] for p in parts}))
  index = {c: i for i, c in enumerate(names)}
  return np.asarray([index[p[0]] for p in parts], np.int32), names


def open_images(spec: str, size: int) -> ImageSet:
  """`folder:DIR` (a folder or a tar archive) or `tfds:NAME[:SPLIT]` (default split: train)."""
  kind, _, rest = spec.partition(":")
  if kind == "tfds" and rest:
    name, _, split = rest.partition(":")
    decoded = sources.decode_tfds(name, split or "train", size, data_dir=None)
    paths = [str(i) for i in range(len(decoded.images))]
    return ImageSet(spec, f"tfds:{name}:{split or 'train'}", paths, 0, lambda p: b"",
                    decoded.images, decoded.labels, decoded.class_names)
  if kind != "folder" or not rest:
    raise sources.DataError(f"--images must be folder:DIR or tfds:NAME[:SPLIT], got {spec!r}.")
  root = os.path.expanduser(rest)
  if os.path.isdir(root):
    files = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, fs in os.walk(root) for f in fs if not f.startswith("."))
    read = lambda p: pathlib.Path(root, p).read_bytes()
  elif os.path.isfile(root) and tarfile.is_tarfile(root):
    tar = tarfile.open(root, "r:*")
    members = {m.name: m for m in tar.getmembers()
               if m.isfile() and not pathlib.PurePosixPath(m.name).name.startswith(".")}
    files = sorted(members)
    read = lambda p: tar.extractfile(members[p]).read()
  else:
    raise sources.DataError(f"--images {spec}: {root} is neither a folder nor a tar archive.")
  paths = [f for f in files if _is_image(f)]
  if not paths:
    raise sources.DataError(f"--images {spec}: no images under {root} "
                            f"({len(files)} other files; extensions read: "
                            f"{', '.join(sources.IMAGE_EXTENSIONS)}).")
  labels, class_names = _labels(paths)
  return ImageSet(spec, root, paths, len(files) - len(paths), read, None, labels, class_names)


def _batches(images: ImageSet, size: int, batch: int, skip_corrupt: bool,
             skipped: list[str]) -> Iterator[tuple[list[int], np.ndarray]]:
  """(positions, uint8 [b, S, S, 3]) in order; undecodable files raise or are skipped."""
  for start in range(0, len(images.paths), batch):
    if images.decoded is not None:
      yield list(range(start, min(start + batch, len(images.paths)))), \
          images.decoded[start:start + batch]
      continue
    kept, arrays = [], []
    for i in range(start, min(start + batch, len(images.paths))):
      name = os.path.join(images.root, images.paths[i])
      try:
        arrays.append(sources.load_image(images.read(images.paths[i]), size, name))
        kept.append(i)
      except sources.DataError as e:
        if not skip_corrupt:
          raise sources.DataError(f"{e} (--skip_corrupt leaves such files out)") from None
        skipped.append(images.paths[i])
        print(f"warning: skipping {e}", file=sys.stderr)
    if kept:
      yield kept, np.stack(arrays)


def embed_images(encoder: Encoder, images: ImageSet, *, batch_size: int = 256,
                 skip_corrupt: bool = False, progress: bool = True) -> dict:
  """Every image of `images` through `encoder`: the arrays `python -m ssl_jax.embed` saves."""
  size = encoder.image_size
  total = -(-len(images.paths) // batch_size)
  bar = reporting.Progress(total, "embedding", batch_size, enabled=progress, delay=2.0)
  kept, hs, zs, skipped = [], [], [], []
  for done, (positions, x) in enumerate(
      _batches(images, size, batch_size, skip_corrupt, skipped), 1):
    h, z = encoder.embed(x, batch_size=batch_size)
    kept += positions
    hs.append(h)
    zs.append(z)
    bar.update(done)
  if not kept:
    raise sources.DataError(f"--images {images.source}: no image could be decoded.")
  out = {"h": np.concatenate(hs), "z": np.concatenate(zs),
         "paths": np.asarray([images.paths[i] for i in kept]),
         "root": np.asarray(images.root), "source": np.asarray(images.source),
         "step": np.asarray(encoder.step), "skipped": np.asarray(skipped, dtype=str),
         "ignored": np.asarray(images.ignored)}
  if images.labels is not None:
    out["labels"] = images.labels[kept]
    out["class_names"] = np.asarray(images.class_names)
  return out


def main() -> None:
  from absl import flags
  from ssl_jax import cli
  from ssl_jax.encoder import load_encoder
  flags.DEFINE_string("workdir", None, "Training workdir (latest checkpoint) or an export file.")
  flags.DEFINE_integer("step", None, "The checkpoint's step (workdirs only; default: latest).")
  flags.DEFINE_string("images", None, "folder:DIR (folder or tar archive) or tfds:NAME[:SPLIT].")
  flags.DEFINE_string("out", None, "The .npz to write.")
  flags.DEFINE_integer("batch_size", 256, "Images per batch (over all local devices).")
  flags.DEFINE_bool("skip_corrupt", False, "Leave out (and list) images that do not decode.")
  f = flags.FLAGS

  def work() -> str:
    cli.check_writable(f.out)
    encoder = load_encoder(f.workdir, f.step)
    images = open_images(f.images, encoder.image_size)
    arrays = embed_images(encoder, images, batch_size=f.batch_size, skip_corrupt=f.skip_corrupt)
    storage.save_npz(f.out, **arrays)  # written whole: a crash leaves no half file
    return (f"embedded {len(arrays['paths'])} images from {images.source} with the "
            f"step-{encoder.step} encoder: h {list(arrays['h'].shape)}, z "
            f"{list(arrays['z'].shape)}"
            + (f", {len(images.class_names)} classes" if "labels" in arrays else "")
            + f"; {images.ignored} non-image files ignored, {len(arrays['skipped'])} "
            f"skipped; wrote {f.out}")
  cli.run_command(work, ["workdir", "images", "out"])


if __name__ == "__main__":
  main()
