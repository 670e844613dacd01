"""Export a trained encoder to one file:

    python -m ssl_jax.export --workdir runs/quickstart --out model.msgpack

The file (flax serialization, msgpack) holds the parameters and BatchNorm
statistics of the latest checkpoint (or `--step`) and the run's config; no
bank and no optimizer state. `ssl_jax.load_encoder("model.msgpack")` reads it
without orbax and without the workdir.
"""

from __future__ import annotations

import os

from ssl_jax import storage


def folder_bytes(path: str) -> int:
  """Bytes of every file under `path` (a local folder or gs://...)."""
  if storage.is_remote(path):
    import fsspec
    fs, root = fsspec.core.url_to_fs(path)
    return int(fs.du(root))
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
  from absl import flags
  from ssl_jax import cli
  flags.DEFINE_string("workdir", None, "The training workdir.")
  flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
  flags.DEFINE_string("out", None, "The file to write, e.g. model.msgpack.")
  f = flags.FLAGS

  def work() -> str:
    from ssl_jax import encoder as encoder_lib
    cli.check_writable(f.out)
    if not storage.path(f.workdir).is_dir():
      raise FileNotFoundError(f"--workdir {f.workdir}: no such folder.")
    encoder = encoder_lib.load_encoder(f.workdir, f.step)
    data = encoder_lib.export_bytes(encoder)
    storage.write_bytes_atomic(f.out, data)
    checkpoint = folder_bytes(storage.join(f.workdir, "checkpoints", str(encoder.step)))
    return (f"wrote {f.out}: {len(data) / 2**20:.2f} MiB (step {encoder.step}; the "
            f"checkpoint, with bank and optimizer state, is {checkpoint / 2**20:.2f} MiB)")
  cli.run_command(work, ["workdir", "out"])


if __name__ == "__main__":
  main()
