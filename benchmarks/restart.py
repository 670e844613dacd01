"""Time to the first step on a first start and on a restart, with and without the
compilation cache (`config.compilation_cache_dir`).

    python -m benchmarks.restart
    python -m benchmarks.restart --config configs/quickstart.py --args ''   # the quickstart itself

For each setting of the cache (`workdir`: <workdir>/compilation_cache, and
`""`: off) the command line trains --config for one epoch in a fresh workdir
(the first start: nothing compiled yet), then reruns it with one more epoch
in the same workdir (a restart: it resumes from the checkpoint and compiles,
or reads back, the same programs). Each row is one process's
`first_step_seconds` from summary.json (start to first step done: reading
data, initialising, compiling) and its `wall_seconds`. Writes
`<--out>.json` ({"rows": [{cache, start, first_step_seconds, wall_seconds}]})
and `.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

# 1% of CIFAR-10 through a ResNet-10 of width 1/8 on 2 fake devices: seconds of
# training, so compiling is most of a start (as at ImageNet shapes, where it takes minutes).
TINY = ("--config.data.fraction=0.01 --config.data.test_fraction=0.02 "
        "--config.model.name=resnet10 --config.model.width=0.125 --config.batch_size=64 "
        "--config.eval.batch_size=256 --config.eval.linear_epochs=2 --config.eval.every_epochs=0")


def one_run(config: str, workdir: str, args: list[str], cache: str, epochs: int) -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)   # the run's own setting decides
  cmd = [sys.executable, "-m", "ssl_jax.main", "--config", config, "--workdir", workdir, *args,
         f"--config.compilation_cache_dir={cache}", f"--config.num_epochs={epochs}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  return {k: summary[k] for k in ("first_step_seconds", "wall_seconds")}


def markdown(results: dict) -> str:
  lines = [f"# Time to the first step (`{results['command']}`)", "", results["environment"], "",
           "| compilation cache | start | first step after (s) | whole process (s) |",
           "|---|---|---:|---:|"]
  for r in results["rows"]:
    lines.append(f"| {r['cache'] or 'off'} | {r['start']} | {r['first_step_seconds']:.1f} | "
                 f"{r['wall_seconds']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default="configs/quickstart.py")
  ap.add_argument("--args", default=TINY, help="Config overrides, space-separated.")
  ap.add_argument("--out", default="benchmarks/results/restart")
  args = ap.parse_args(argv)
  from ssl_jax import devices, storage
  import jax
  results = {"command": "python -m benchmarks.restart " + " ".join(sys.argv[1:]),
             "environment": f"jax {jax.__version__}, {devices.processor_name()}, "
                            f"{os.cpu_count()} cores, {datetime.date.today().isoformat()}",
             "rows": []}
  overrides = args.args.split()
  with tempfile.TemporaryDirectory() as tmp:
    for cache in ("workdir", ""):
      workdir = os.path.join(tmp, cache or "off")
      for start, epochs in (("first", 1), ("restart", 2)):
        row = {"cache": cache, "start": start,
               **one_run(args.config, workdir, overrides, cache, epochs)}
        results["rows"].append(row)
        print(row, flush=True)
        storage.write_json_atomic(args.out + ".json", results)
        storage.write_text_atomic(args.out + ".md", markdown(results))


if __name__ == "__main__":
  main()
