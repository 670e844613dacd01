"""Look at what an encoder learned: nearest neighbours, leave-one-out kNN, near duplicates.

    python -m ssl_jax.neighbors --embeddings photos.npz --out grid.png
    python -m ssl_jax.neighbors --embeddings photos.npz --out grid.png --query cats/001.jpg --k 10
    python -m ssl_jax.neighbors --embeddings photos.npz --out grid.png --duplicates 0.98
    python -m ssl_jax.neighbors --embeddings bank.npz --out grid.png --duplicates 0.95

`--embeddings` is the output of `python -m ssl_jax.embed` or of
`python -m ssl_jax.export --bank` (a run's memory bank: the training set's
rows as training left them, so no pass over the images).

The picture has one row per query (random ones with a fixed `--seed`, or
`--query` paths): the query, then its k nearest neighbours by cosine
similarity of the backbone features `h` (`--features z`: of the projection;
a bank file has only `z`, which is then used),
each captioned with the similarity. With labels in the file,
neighbours are framed green where their label matches the query's and red
where it does not, and the leave-one-out kNN top-1 of the whole file is
printed. Images are read again from the embedded folder, archive or TFDS split.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import numpy as np

from ssl_jax import sources

CAPTION = 14   # pixels of text under each cell
PAD = 4


def unit(z: np.ndarray) -> np.ndarray:
  z = np.asarray(z, np.float32)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def nearest(z: np.ndarray, queries: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices [Q, k], cosine similarities [Q, k]) of each query's k nearest other rows,
  most similar first; `z` [N, d] need not be normalised."""
  z = unit(z)
  sims = z[np.asarray(queries)] @ z.T                      # [Q, N]
  sims[np.arange(len(queries)), np.asarray(queries)] = -np.inf  # not itself
  k = min(k, len(z) - 1)
  idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return idx, np.take_along_axis(sims, idx, axis=1)


def leave_one_out_knn(z: np.ndarray, labels: np.ndarray, k: int = 200,
                      temperature: float = 0.1, chunk: int = 1024) -> float:
  """Top-1 of the weighted kNN vote (evaluation's rule: weights exp(s / T)) of every row
  against all the others."""
  z, labels = unit(z), np.asarray(labels)
  k = min(k, len(z) - 1)
  num_classes = int(labels.max()) + 1
  correct = 0
  for start in range(0, len(z), chunk):
    rows = np.arange(start, min(start + chunk, len(z)))
    sims = z[rows] @ z.T
    sims[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sims, top, axis=1) / temperature)
    votes = np.zeros((len(rows), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(rows)), k), labels[top].ravel()), weights.ravel())
    correct += int(np.sum(votes.argmax(1) == labels[rows]))
  return correct / len(z)


def duplicates(z: np.ndarray, threshold: float, chunk: int = 1024) -> list[tuple[int, int, float]]:
  """Pairs (i < j, similarity) with cosine similarity >= threshold, most similar first."""
  z = unit(z)
  pairs = []
  for start in range(0, len(z), chunk):
    sims = z[start:start + chunk] @ z.T
    i, j = np.nonzero(sims >= threshold)
    i = i + start
    keep = j > i
    pairs += [(int(a), int(b), float(sims[a - start, b])) for a, b in zip(i[keep], j[keep])]
  return sorted(pairs, key=lambda p: -p[2])


def grid_size(rows: int, k: int, cell: int) -> tuple[int, int]:
  """(width, height) in pixels of the neighbour picture."""
  return (k + 1) * (cell + PAD) + PAD, rows * (cell + CAPTION + PAD) + PAD


def grid(thumbs: np.ndarray, neighbours: np.ndarray, sims: np.ndarray,
         match: Optional[np.ndarray] = None):
  """The picture (PIL image): row q is thumbs[q] then thumbs of neighbours[q].

  thumbs: uint8 [R, cell, cell, 3], the images neighbours' entries index;
  neighbours: [Q, 1 + k], the query first, then its k neighbours;
  sims [Q, k]; match [Q, k] bool frames neighbours green (True) or red.
  """
  from PIL import Image, ImageDraw
  rows, cols = neighbours.shape
  cell = thumbs.shape[1]
  picture = Image.new("RGB", grid_size(rows, cols - 1, cell), "white")
  draw = ImageDraw.Draw(picture)
  for q in range(rows):
    for c in range(cols):
      x, y = PAD + c * (cell + PAD), PAD + q * (cell + CAPTION + PAD)
      picture.paste(Image.fromarray(thumbs[neighbours[q, c]]), (x, y))
      if c and match is not None:
        draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], width=2,
                       outline=(0, 160, 0) if match[q, c - 1] else (200, 0, 0))
      draw.text((x, y + cell + 1), "query" if c == 0 else f"{sims[q, c - 1]:.3f}", fill="black")
  return picture


def thumbnails(data, rows: Sequence[int], cell: int) -> dict[int, np.ndarray]:
  """{row: uint8 [cell, cell, 3]} read again from the source the embeddings came from."""
  from ssl_jax.embed import open_images
  root, source = str(data["root"]), str(data["source"])
  if source.startswith("tfds:"):
    images = open_images(source, cell)
    return {r: images.decoded[int(data["paths"][r])] for r in rows}
  images = open_images(f"folder:{root}", cell)
  return {r: sources.load_image(images.read(str(data["paths"][r])), cell,
                                os.path.join(root, str(data["paths"][r]))) for r in rows}


def main() -> None:
  from absl import flags
  from ssl_jax import cli
  flags.DEFINE_string("embeddings", None, "An .npz written by python -m ssl_jax.embed or by "
                      "python -m ssl_jax.export --bank.")
  flags.DEFINE_string("out", None, "The picture to write (.png).")
  flags.DEFINE_integer("queries", 8, "Random queries (when no --query is given).")
  flags.DEFINE_multi_string("query", [], "A query's path as in the .npz (repeatable).")
  flags.DEFINE_integer("k", 8, "Neighbours per query.")
  flags.DEFINE_integer("seed", 0, "Seed of the random queries.")
  flags.DEFINE_integer("cell", 64, "Pixels per image in the picture.")
  flags.DEFINE_float("duplicates", None, "List pairs with cosine similarity >= this.")
  flags.DEFINE_enum("features", "h", ["h", "z"],
                    "h: backbone features (what kNN evaluation reads); z: the projection.")
  f = flags.FLAGS

  def work() -> None:
    cli.check_writable(f.out)
    if not os.path.isfile(f.embeddings):
      raise FileNotFoundError(f"--embeddings {f.embeddings}: no such file.")
    with open(f.embeddings, "rb") as fh:
      is_zip = fh.read(4) == b"PK\x03\x04"
    if not is_zip:  # numpy would guess a pickle and add its allow_pickle advice
      raise ValueError(f"--embeddings {f.embeddings} is not an .npz file; give the file "
                       f"python -m ssl_jax.embed wrote.")
    try:
      data = dict(np.load(f.embeddings, allow_pickle=False))
      # A bank export holds the projection only: its default is z.
      features = "z" if "h" not in data and not flags.FLAGS["features"].present else f.features
      z, paths = data[features], [str(p) for p in data["paths"]]
    except (ValueError, KeyError, OSError) as e:
      raise ValueError(f"--embeddings {f.embeddings} is not an ssl_jax.embed or "
                       f"ssl_jax.export --bank file ({e}).")
    if len(z) < 2:
      raise ValueError(f"--embeddings {f.embeddings} holds {len(z)} image(s); neighbours "
                       "need at least 2.")
    if f.query:
      where = {p: i for i, p in enumerate(paths)}
      unknown = [q for q in f.query if q not in where]
      if unknown:
        raise ValueError(f"--query {unknown[0]!r} is not in {f.embeddings} (paths are "
                         f"relative to {data['root']}, e.g. {paths[0]!r}).")
      queries = [where[q] for q in f.query]
    else:
      rng = np.random.default_rng(f.seed)
      queries = sorted(rng.choice(len(z), min(f.queries, len(z)), replace=False).tolist())
    idx, sims = nearest(z, queries, f.k)
    labels = data.get("labels")
    match = None if labels is None else labels[idx] == labels[np.asarray(queries)][:, None]
    table = np.concatenate([np.asarray(queries)[:, None], idx], axis=1)
    # Only the pictured rows are read, into [R, cell, cell, 3]; the table is renumbered
    # to them (an array over all N rows would take N * cell^2 * 3 bytes).
    rows, compact = np.unique(table, return_inverse=True)
    thumbs = thumbnails(data, rows.tolist(), f.cell)
    stack = np.stack([thumbs[r] for r in rows.tolist()])
    grid(stack, compact.reshape(table.shape), sims, match).save(f.out, optimize=True)
    for q, row, s in zip(queries, idx, sims):
      print(f"{paths[q]}: " + ", ".join(f"{paths[j]} {v:.3f}" for j, v in zip(row, s)))
    if labels is not None:
      print(f"leave-one-out kNN top-1 (k=200, T=0.1) over {len(z)} images: "
            f"{leave_one_out_knn(z, labels):.4f}")
    if f.duplicates is not None:
      pairs = duplicates(z, f.duplicates)
      print(f"{len(pairs)} pair(s) with cosine similarity >= {f.duplicates}"
            + (" (the 100 most similar:)" if len(pairs) > 100 else ":"))
      for i, j, s in pairs[:100]:
        print(f"  {s:.4f}  {paths[i]}  {paths[j]}")
    print(f"wrote {f.out} ({len(queries)} queries x {idx.shape[1]} neighbours)",
          file=sys.stderr)
  cli.run_command(work, ["embeddings", "out"])


if __name__ == "__main__":
  main()
