"""Images per second of the streaming input (`config.data.stream=True`) on this host.

    python -m benchmarks.stream_input                      # 400 JPEGs of 500x375
    python -m benchmarks.stream_input --images 2000 --workers 0,2,4 --sizes 64,224

Writes synthetic ImageNet-sized JPEGs (smooth random fields) into a temporary
folder tree, then, for each output size, times the host crop alone (one
process) and one epoch of `stream.TrainStream` (read, decode,
random-resized-crop, batch) for each worker count; beside them, batches
assembled from an in-memory decoded split (`data.train_batches`), the
in-memory path's per-step host work. Prints a table and writes
benchmarks/results/stream_input.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np


def write_jpegs(root: pathlib.Path, n: int, size=(500, 375)) -> None:
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(n):
    small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    path = root / "train" / f"c{i % 10}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def time_crops(paths: list[pathlib.Path], draft: bool, size: int = 224) -> float:
  """Images/s of the host crop alone, one process. draft: `stream.decode_crop`, which
  decodes a JPEG at 1/2 to 1/8 scale where the crop is at least twice the output
  (for 500x375 photos and 224 crops, rarely); else a full decode, then the crop."""
  from PIL import Image
  from ssl_jax import stream
  datas = [p.read_bytes() for p in paths]
  t0 = time.perf_counter()
  for i, data in enumerate(datas):
    rng = np.random.default_rng([0, 0, i, 0])
    if draft:
      stream.decode_crop(data, str(i), size, rng, (0.08, 1.0), (3 / 4, 4 / 3))
    else:
      img = Image.open(io.BytesIO(data)).convert("RGB")
      left, top, w, h = stream.crop_box(rng, *img.size, (0.08, 1.0), (3 / 4, 4 / 3))
      np.asarray(img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))
  return len(datas) / (time.perf_counter() - t0)


def time_epoch(root: pathlib.Path, workers: int, batch: int,
               size: int = 224) -> tuple[float, float]:
  """(seconds to the first batch: starting the workers; images/s after it) of one
  epoch of TrainStream."""
  from configs import default
  from ssl_jax import stream
  cfg = default.get_config().data
  cfg.unlock()
  cfg.update(dict(source=f"folder:{root}", stream=True, image_size=size, workers=workers,
                  cache_dir=""))
  split = stream.load_split(cfg, "train", fraction=1.0, seed=0, log=lambda *a: None)
  batches = stream.TrainStream(split, global_batch=batch, num_local_devices=1, seed=0, epoch=0,
                               start_step=0, views=1, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
  t0 = time.perf_counter()
  it = iter(batches)
  next(it)
  t1 = time.perf_counter()
  count = sum(b["image"].shape[1] for b in it)
  return t1 - t0, count / (time.perf_counter() - t1)


def time_memory_batches(n: int, batch: int, size: int) -> float:
  """Images/s of the in-memory path's host work: batches gathered from a decoded split."""
  from ssl_jax import data as data_lib
  split = data_lib.Split(np.zeros((n, size, size, 3), np.uint8), np.zeros(n, np.int32), ())
  t0, count = time.perf_counter(), 0
  for epoch in range(3):
    for b in data_lib.train_batches(split, global_batch=batch, num_local_devices=1, seed=0,
                                    epoch=epoch):
      count += b["image"].shape[1]
  return count / (time.perf_counter() - t0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=400)
  parser.add_argument("--workers", default="0,2")
  parser.add_argument("--batch", type=int, default=40)
  parser.add_argument("--sizes", default="64,224")
  parser.add_argument("--out", default="benchmarks/results/stream_input")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    write_jpegs(root, args.images)
    paths = sorted(root.rglob("*.jpg"))
    kb = np.mean([p.stat().st_size for p in paths]) / 1024
    rows, starts = {}, {}
    for size in (int(x) for x in args.sizes.split(",")):
      rows[f"{size} px: full decode, then crop (1 process)"] = time_crops(paths, False, size)
      rows[f"{size} px: stream.decode_crop (1 process)"] = time_crops(paths, True, size)
      for w in (int(x) for x in args.workers.split(",")):
        name = f"{size} px: TrainStream, {w} workers" + (" (2 threads)" if w == 0 else "")
        startup, rows[name + ", after the first batch"] = time_epoch(root, w, args.batch, size)
        starts[name] = startup
      rows[f"{size} px: in-memory batches (decoded split)"] = time_memory_batches(
          args.images, args.batch, size)
  meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
          "machine": platform.processor() or platform.machine(), "images": args.images,
          "jpeg_kb": round(float(kb), 1), "command": "python -m benchmarks.stream_input "
          f"--images {args.images} --workers {args.workers} --batch {args.batch} "
          f"--sizes {args.sizes}"}
  lines = [f"# Streaming input, {meta['date']}, {meta['cpus']} CPUs", "",
           f"`{meta['command']}`: {args.images} synthetic JPEGs of 500x375 "
           f"({meta['jpeg_kb']} KB mean), random-resized crops (scale 0.08-1).", "",
           "| pipeline | images/s |", "| --- | --- |",
           *[f"| {k} | {v:,.0f} |" for k, v in rows.items()], ""]
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  lines += ["Seconds to the first batch (starting the workers, each importing ssl_jax): "
            + "; ".join(f"{k}: {v:.1f}" for k, v in starts.items()) + ".", ""]
  pathlib.Path(args.out + ".json").write_text(json.dumps(
      {"meta": meta, "rows": rows, "seconds_to_first_batch": starts}, indent=1))
  pathlib.Path(args.out + ".md").write_text("\n".join(lines))
  print("\n".join(lines))


if __name__ == "__main__":
  main()
