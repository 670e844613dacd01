"""Images per second of the streaming input (`config.data.stream=True`) on this host.

    python -m benchmarks.stream_input                      # 2,000 JPEGs of 500x375
    python -m benchmarks.stream_input --images 4000 --workers 0,2,4 --sizes 64,224

Writes synthetic ImageNet-sized JPEGs (smooth random fields) into a temporary
folder tree, then, for each output size and each decoder (`config.data.decoder`,
`ssl_jax/decoders.py`):
  - per core: images/s of one process doing the decoder's whole host work
    (pillow: read, decode, random-resized crop and resize; simplejpeg: read,
    decode and copy the crop's window, which the device resizes), and of its
    parts alone (the full decode; pillow's resize from decoded arrays);
  - pooled: images/s of one epoch of `stream.TrainStream` for each worker
    count, in steady state: timed from the batch by which every worker has
    delivered (each worker first imports Grain, and with it JAX, which takes
    seconds of CPU), to the end; the seconds to that point are reported apart;
  - the mean absolute pixel difference between the two decoders' views;
  - beside them, batches assembled from an in-memory decoded split
    (`data.train_batches`), the in-memory path's per-step host work.
Prints a table and writes benchmarks/results/stream_input.{json,md}, with
`rates[decoder][size][workers]` in images/s.
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

DECODERS = ("pillow", "simplejpeg")  # ssl_jax.decoders.DECODERS, config.data.decoder
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def write_jpegs(root: pathlib.Path, n: int, size=(500, 375)) -> None:
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(n):
    small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    path = root / "train" / f"c{i % 10}" / f"{i:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def time_per_core(datas: list[bytes], size: int, decoder: str) -> dict:
  """Images/s in this process: a decoder's whole host work (`decoders.decode_crop`, or
  `decoders.decode_window`, whose resize the device does), and its parts: the full
  decode alone, and (pillow) the crop's resize from decoded images."""
  from PIL import Image
  from ssl_jax import decoders
  rngs = lambda: (np.random.default_rng([0, 0, i, 0]) for i in range(len(datas)))
  host = decoders.decode_window if decoder == "simplejpeg" else decoders.decode_crop
  t0 = time.perf_counter()
  for i, (data, rng) in enumerate(zip(datas, rngs())):
    host(data, str(i), size, rng, SCALE, RATIO)
  whole = len(datas) / (time.perf_counter() - t0)
  t0 = time.perf_counter()
  if decoder == "simplejpeg":
    import simplejpeg
    decoded = [simplejpeg.decode_jpeg(data, colorspace="RGB") for data in datas]
  else:
    decoded = [Image.open(io.BytesIO(data)).convert("RGB") for data in datas]
  decode = len(datas) / (time.perf_counter() - t0)
  if decoder == "simplejpeg":
    return {"decode_crop": whole, "full_decode_alone": decode, "resize_alone": None,
            "tf_decode_and_crop": time_tf_partial_decode(datas)}
  t0 = time.perf_counter()
  for img, rng in zip(decoded, rngs()):
    left, top, w, h = decoders.crop_box(rng, *img.size, SCALE, RATIO)
    np.asarray(img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))
  resize = len(datas) / (time.perf_counter() - t0)
  return {"decode_crop": whole, "full_decode_alone": decode, "resize_alone": resize}


def time_tf_partial_decode(datas: list[bytes]) -> float | None:
  """Images/s of libjpeg-turbo decoding only the crop's window, through TensorFlow's
  `decode_and_crop_jpeg` (eager, one call per image), or None without TensorFlow: the
  partial decode the simplejpeg decoder does without (simplejpeg has none)."""
  try:
    import tensorflow as tf
  except ImportError:
    return None
  import simplejpeg
  from ssl_jax import decoders
  boxes = []
  for i, data in enumerate(datas):
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    left, top, cw, ch = decoders.crop_box(np.random.default_rng([0, 0, i, 0]), w, h, SCALE,
                                          RATIO)
    boxes.append([top, left, ch, cw])
  tf.io.decode_and_crop_jpeg(datas[0], boxes[0], channels=3)   # the op's first-call setup
  t0 = time.perf_counter()
  for data, box in zip(datas, boxes):
    tf.io.decode_and_crop_jpeg(data, box, channels=3).numpy()
  return len(datas) / (time.perf_counter() - t0)


def pixel_difference(datas: list[bytes], size: int) -> float:
  """Mean absolute difference (levels of 255) between the pillow decoder's views and the
  simplejpeg decoder's, resized as the step resizes them (`augment.resize_windows`)."""
  import jax
  from ssl_jax import augment, decoders
  rng = lambda i: np.random.default_rng([0, 0, i, 0])
  pillow = np.stack([decoders.decode_crop(d, str(i), size, rng(i), SCALE, RATIO)
                     for i, d in enumerate(datas)])
  windows = [decoders.decode_window(d, str(i), size, rng(i), SCALE, RATIO)
             for i, d in enumerate(datas)]
  resize = jax.jit(augment.resize_windows, static_argnums=2)
  device = np.asarray(resize(np.stack([w[0] for w in windows]),
                             np.stack([w[1] for w in windows]), size))
  return float(np.abs(pillow.astype(np.int32) - device).mean())


def time_epoch(root: pathlib.Path, workers: int, batch: int, size: int = 224,
               decoder: str = "pillow") -> tuple[float, float]:
  """(seconds until every worker has delivered a batch; images/s after that) of one
  epoch of TrainStream."""
  from configs import default
  from ssl_jax import stream
  cfg = default.get_config().data
  cfg.unlock()
  cfg.update(dict(source=f"folder:{root}", stream=True, image_size=size, workers=workers,
                  cache_dir=""))
  split = stream.load_split(cfg, "train", fraction=1.0, seed=0, log=lambda *a: None)
  batches = stream.TrainStream(split, global_batch=batch, num_local_devices=1, seed=0, epoch=0,
                               start_step=0, views=1, scale=SCALE, ratio=RATIO,
                               decoder=decoder)
  # A batch is cut into pieces of stream.CHUNK rows, dealt to the workers in turn.
  warm = -(-max(workers, 1) // -(-batch // stream.CHUNK))
  t0 = time.perf_counter()
  times = [time.perf_counter() for _ in batches]
  if len(times) <= warm:
    raise SystemExit(f"--images too few: {len(times)} batches, {warm} to warm up")
  return times[warm - 1] - t0, (len(times) - warm) * batch / (times[-1] - times[warm - 1])


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
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--sizes", default="64,224")
  parser.add_argument("--rounds", type=int, default=3, help="per-core timings: best of")
  parser.add_argument("--out", default="benchmarks/results/stream_input")
  args = parser.parse_args()
  sizes = [int(x) for x in args.sizes.split(",")]
  workers = [int(x) for x in args.workers.split(",")]
  rates = {d: {s: {} for s in sizes} for d in DECODERS}
  per_core, starts, memory, diff = {d: {} for d in DECODERS}, {}, {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    write_jpegs(root, args.images)
    paths = sorted(root.rglob("*.jpg"))
    kb = np.mean([p.stat().st_size for p in paths]) / 1024
    datas = [p.read_bytes() for p in paths[:500]]
    for size in sizes:
      # Per core: the best of --rounds, the decoders interleaved, so that a burst of
      # other work on a shared machine does not land on one decoder only.
      for _ in range(args.rounds):
        for d in DECODERS:
          r = time_per_core(datas, size, d)
          best = per_core[d].setdefault(size, r)
          for k, v in r.items():
            best[k] = max(best[k], v) if v is not None else None
      for d in DECODERS:
        for w in workers:
          starts[f"{d}, {size} px, {w} workers"], rates[d][size][w] = time_epoch(
              root, w, args.batch, size, d)
      diff[size] = pixel_difference(datas[:200], size)
      memory[size] = time_memory_batches(args.images, args.batch, size)
  meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
          "machine": platform.processor() or platform.machine(), "images": args.images,
          "jpeg_kb": round(float(kb), 1), "stream_chunk": _chunk(),
          "command": "python -m benchmarks.stream_input "
          f"--images {args.images} --workers {args.workers} --batch {args.batch} "
          f"--sizes {args.sizes} --rounds {args.rounds}"}
  result = {"meta": meta, "rates": rates, "per_core": per_core,
            "decoder_pixel_mean_abs_diff": {"pillow-simplejpeg": diff},
            "seconds_to_every_worker": starts, "in_memory_batches": memory}
  lines = [f"# Streaming input, {meta['date']}, {meta['cpus']} CPUs", "",
           f"`{meta['command']}`: {args.images} synthetic JPEGs of 500x375 "
           f"({meta['jpeg_kb']} KB mean), random-resized crops (scale 0.08-1), batches of "
           f"{args.batch} cut into pieces of at most {meta['stream_chunk']} images.", "",
           f"Per core (one process, {len(datas)} of the images, best of {args.rounds} "
           f"rounds), images/s:", "",
           "| decoder | size | host work (decode and crop) | x pillow | full decode alone "
           "| host resize alone |", "| --- | --- | --- | --- | --- | --- |"]
  for d in DECODERS:
    for size, r in per_core[d].items():
      resize = f"{r['resize_alone']:,.0f}" if r["resize_alone"] else "- (on the device)"
      lines.append(f"| {d} | {size} | {r['decode_crop']:,.0f} | "
                   f"{r['decode_crop'] / per_core['pillow'][size]['decode_crop']:.2f}x | "
                   f"{r['full_decode_alone']:,.0f} | {resize} |")
  tf_rates = [r.get("tf_decode_and_crop") for r in per_core.get("simplejpeg", {}).values()]
  if tf_rates and tf_rates[0]:
    lines += ["", f"Decoding only the crop's window (TensorFlow's `decode_and_crop_jpeg`, "
              f"libjpeg-turbo's partial decode, not a decoder here), images/s: "
              f"{tf_rates[0]:,.0f}."]
  lines += ["", "Mean absolute pixel difference, pillow's views against simplejpeg's resized "
            "by `augment.resize_windows` (levels of 255, 200 images): "
            + "; ".join(f"{s} px: {v:.2f}" for s, v in diff.items()) + "."]
  lines += ["", "TrainStream, one epoch in steady state, images/s (0 workers: two threads of "
            "the reading process):", "",
            "| decoder | size | " + " | ".join(f"{w} workers" for w in workers)
            + " | 2 workers / 1 |", "| --- | --- | " + " | ".join("---" for _ in workers)
            + " | --- |"]
  for d in DECODERS:
    for size, r in rates[d].items():
      ratio = f"{r[2] / r[1]:.2f}x" if 1 in r and 2 in r else "-"
      lines.append(f"| {d} | {size} | " + " | ".join(f"{r[w]:,.0f}" for w in workers)
                   + f" | {ratio} |")
  lines += ["", "Seconds until every worker has delivered (starting the workers): "
            + "; ".join(f"{k}: {v:.1f}" for k, v in starts.items()) + ".", "",
            "In-memory batches (a decoded split), images/s: "
            + "; ".join(f"{s} px: {v:,.0f}" for s, v in memory.items()) + ".", ""]
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out + ".json").write_text(json.dumps(result, indent=1))
  pathlib.Path(args.out + ".md").write_text("\n".join(lines))
  print("\n".join(lines))


def _chunk() -> int:
  from ssl_jax import stream
  return stream.CHUNK


if __name__ == "__main__":
  main()
