"""Measures the seed spread of the learning tests' recipe and the margins it supports.

    python tests/learning_margins.py                    # ours, simclr, byol; seeds 0-3
    python tests/learning_margins.py --methods simclr --seeds 0,1

Each (method, seed) runs the learning tests' command (`tests.helpers.learning_command`,
2 fake CPU devices) in a temporary workdir and reads kNN top-1 of the untrained
and the trained network from its summary. The margin a test may assert is the
smallest gain less half the spread of the gains (max - min): a recipe that
learns fails it only when it falls well outside what the seeds showed. Writes a
Markdown table to --out (default tests/learning_margins.md) and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import learning_command  # noqa: E402


def run(method: str, seed: int, extra: list[str]) -> tuple[float, float, float, float, int,
                                                          float]:
  """(untrained kNN, trained kNN, linear top-1, seconds, epochs, classifier top-1 or nan)
  of one seed's run (a classifier's top-1: the supervised method's)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "run")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "ssl_jax.main",
                           *learning_command(method, workdir, seed), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    summary = json.load(open(os.path.join(workdir, "summary.json")))
  return (summary["knn_top1_init"], summary["knn_top1"], summary["linear_top1"],
          time.time() - t0, summary["epochs"], summary.get("classifier_top1", float("nan")))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default="ours,simclr,byol")
  parser.add_argument("--seeds", default="0,1,2,3")
  parser.add_argument("--out", default="tests/learning_margins.md")
  parser.add_argument("--extra", default="", help="more --config flags for every run, "
                      "space-separated (to try a recipe before it goes into tests/helpers.py)")
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  rows, summary = [], []
  for method in args.methods.split(","):
    gains, tops = [], []
    for seed in seeds:
      init, knn, linear, seconds, epochs, top = run(method, seed, args.extra.split())
      gains.append(knn - init)
      tops.append(top)
      rows.append(f"| {method} | {seed} | {100 * init:.2f} | {100 * knn:.2f} | "
                  f"{100 * (knn - init):+.2f} | {100 * linear:.2f} | {100 * top:.2f} | "
                  f"{seconds:.0f} |")
      print(rows[-1], flush=True)
    spread = max(gains) - min(gains)
    margin = min(gains) - spread / 2
    summary.append(f"| {method} | {epochs} | {100 * statistics.mean(gains):+.2f} | "
                   f"{100 * (statistics.stdev(gains) if len(gains) > 1 else 0):.2f} | "
                   f"{100 * min(gains):+.2f} | {100 * spread:.2f} | {100 * margin:+.2f} |")
    if tops[0] == tops[0]:  # a classifier: its top-1 above chance (10 classes)
      top_margin = min(tops) - (max(tops) - min(tops)) / 2 - 0.1
      summary.append(f"| {method} classifier top-1 above chance (10%) | {epochs} | "
                     f"{100 * (statistics.mean(tops) - 0.1):+.2f} | "
                     f"{100 * (statistics.stdev(tops) if len(tops) > 1 else 0):.2f} | "
                     f"{100 * (min(tops) - 0.1):+.2f} | {100 * (max(tops) - min(tops)):.2f} | "
                     f"{100 * top_margin:+.2f} |")
  table = "\n".join([
      "# The learning tests' margins, from the seed spread", "",
      f"`python tests/learning_margins.py --methods {args.methods} --seeds {args.seeds}"
      + (f" --extra='{args.extra}'" if args.extra else "") + "`, "
      f"{time.strftime('%Y-%m-%d')}. kNN top-1 on 1,000 CIFAR-10 test images, "
      "after training on 2,500 (points).", "",
      "| method | epochs | mean gain | sd | smallest gain | spread (max - min) | "
      "margin (smallest - spread / 2) |",
      "| --- | --- | --- | --- | --- | --- | --- |", *summary, "",
      "| method | seed | untrained kNN | trained kNN | gain | linear | classifier | seconds |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""])
  (REPO / args.out).write_text(table)
  print(table)


if __name__ == "__main__":
  main()
