"""Export a trained encoder, or its memory bank, to one file each:

    python -m ssl_jax.export --workdir runs/quickstart --out model.msgpack
    python -m ssl_jax.export --workdir runs/quickstart --bank bank.npz

`--out` (flax serialization, msgpack) holds the parameters and BatchNorm
statistics of the latest checkpoint (or `--step`) and the run's config; no
bank and no optimizer state. `ssl_jax.load_encoder("model.msgpack")` reads it
without orbax and without the workdir.

`--bank` writes the bank of a bank method's checkpoint: an embedding of every
training image, refreshed as it trained, in `python -m ssl_jax.embed`'s
layout (no pickle): `z` [N, d] float32 (the bank rows), `index` [N] (instance
indices), `paths`, `root`, `source`, `step`, `skipped`, `ignored`, and for
folder sources `labels` and `class_names` (`ssl_jax.instances`). So
`python -m ssl_jax.neighbors --embeddings bank.npz` shows neighbours and
near-duplicates of the training set without a pass over it.
"""

from __future__ import annotations

import os

import numpy as np

from ssl_jax import storage


def folder_bytes(path: str) -> int:
  """Bytes of every file under `path` (a local folder or gs://...)."""
  if storage.is_remote(path):
    import fsspec
    fs, root = fsspec.core.url_to_fs(path)
    return int(fs.du(root))
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def bank_arrays(workdir: str, step=None, log=print) -> dict:
  """The arrays `--bank` writes, from the checkpoint at `step` (default: the latest)."""
  from ssl_jax import encoder as encoder_lib
  from ssl_jax import instances
  from ssl_jax import methods
  config, step, path = encoder_lib.checkpoint_path(workdir, step)
  if not methods.get(config.method).uses_bank:
    raise ValueError(f"{workdir} trained {config.method}, which keeps no memory bank; "
                     f"python -m ssl_jax.embed embeds its training images instead.")
  bank = encoder_lib.restore_parts(path, ("bank",))["bank"]
  info = storage.join(workdir, "run_info.json")
  if storage.exists(info):   # a sharded run saves zero padding rows past N (mapping.to_saved)
    bank = bank[:storage.read_json(info)["num_train_examples"]]
  names = instances.training_instances(config, len(bank), log)
  return {"z": np.asarray(bank, np.float32), "index": np.arange(len(bank), dtype=np.int64),
          **names, "step": np.asarray(step), "ignored": np.asarray(0),
          "bank_dtype": np.asarray(np.dtype(bank.dtype).name)}


def main() -> None:
  from absl import flags
  from ssl_jax import cli
  flags.DEFINE_string("workdir", None, "The training workdir.")
  flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
  flags.DEFINE_string("out", None, "The encoder file to write, e.g. model.msgpack.")
  flags.DEFINE_string("bank", None, "The .npz to write the memory bank to, e.g. bank.npz.")
  f = flags.FLAGS

  def work() -> str:
    from ssl_jax import encoder as encoder_lib
    if not (f.out or f.bank):
      raise ValueError("give --out FILE (the encoder), --bank FILE.npz (the memory bank), "
                       "or both.")
    for target in (f.out, f.bank):
      if target:
        cli.check_writable(target)
    if not storage.path(f.workdir).is_dir():
      raise FileNotFoundError(f"--workdir {f.workdir}: no such folder.")
    lines = []
    if f.out:
      encoder = encoder_lib.load_encoder(f.workdir, f.step)
      data = encoder_lib.export_bytes(encoder)
      storage.write_bytes_atomic(f.out, data)
      checkpoint = folder_bytes(storage.join(f.workdir, "checkpoints", str(encoder.step)))
      lines.append(f"wrote {f.out}: {len(data) / 2**20:.2f} MiB (step {encoder.step}; the "
                   f"checkpoint, with bank and optimizer state, is {checkpoint / 2**20:.2f} MiB)")
    if f.bank:
      arrays = bank_arrays(f.workdir, f.step)
      storage.save_npz(f.bank, **arrays)   # written whole: a crash leaves no half file
      lines.append(f"wrote {f.bank}: the step-{int(arrays['step'])} bank, "
                   f"{arrays['z'].shape[0]} rows x {arrays['z'].shape[1]} "
                   f"(stored as {arrays['bank_dtype']}), named from {arrays['source']}")
    return "\n".join(lines)
  cli.run_command(work, ["workdir"])


if __name__ == "__main__":
  main()
