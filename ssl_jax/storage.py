"""Where a run's files live: a local disk or an object store (`gs://`), one path type.

Every file a run reads or writes goes through `etils.epath` (the path library
orbax uses for checkpoints), so a workdir, a decoded-split cache or a
`folder:` source may be a local path or `gs://bucket/path` alike. Cloud paths
need `pip install "ssl_jax[gcs]"` (gcsfs, which epath uses for them).

What differs, and how each guarantee is kept:

  whole-file writes   disk: a temporary file renamed over the target (rename
                      is atomic); object store: one object upload, which
                      appears whole or not at all (an object store has no
                      rename, and copying would not be atomic either).
  appended logs       disk: appended and flushed line by line; object store
                      (no append): kept in memory and the whole object
                      rewritten at flush points (`reporting.MetricWriter`).
  exclusive creation  disk: O_EXCL; object store: an upload conditional on
                      no object existing (`create_exclusive`, the workdir lock).

`EPATH_USE_TF` defaults to false here: with TensorFlow installed, epath would
otherwise import it for every `gs://` path, and the training path imports
TensorFlow only for `tfds:` sources (a user's own setting is kept).
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import posixpath
import shutil
import uuid
from typing import Optional, Union

os.environ.setdefault("EPATH_USE_TF", "false")  # before epath picks a backend for gs://

import fsspec.config  # noqa: E402
from etils import epath  # noqa: E402  (after the backend choice above)

# gcsfs would otherwise answer "does it exist, how long is it" from folder
# listings it cached earlier, which another process (a rerun, a lock holder,
# orbax's other writers) may have changed since: every question asks the store.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)

PathLike = Union[str, os.PathLike]


class StorageError(ValueError):
  """A path that cannot be used (missing bucket, no credentials, no permission): one line."""


# Exit status of a run stopped because its disk is full (sysexits.h's EX_IOERR):
# not 1 (a config or data mistake) and not 143 (preempted, resumable as is).
DISK_FULL_EXIT_CODE = 74


class DiskFull(OSError):
  """A write failed for lack of space; the message says where and what was kept."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error`, or an exception it was raised from, is ENOSPC.

  Orbax raises it wrapped (tensorstore's `RESOURCE_EXHAUSTED ... No space left
  on device`, a ValueError; or an OSError from a metadata write, several
  layers down), so the message is checked as well as the errno.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if (isinstance(error, DiskFull) or getattr(error, "errno", None) == errno.ENOSPC
        or "No space left on device" in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def free_bytes(p: PathLike) -> Optional[int]:
  """Free bytes on the file system holding local path `p` (None for object stores)."""
  if is_remote(p):
    return None
  p = os.path.expanduser(os.fspath(p))
  while p and not os.path.exists(p):
    p = os.path.dirname(p)
  try:
    return shutil.disk_usage(p or ".").free
  except OSError:
    return None


def remove_tree(p: PathLike) -> None:
  """Removes a file or folder tree, local or on an object store, if it exists."""
  target = path(p)
  if target.is_dir():
    target.rmtree()
  elif target.exists():
    target.unlink()


def is_remote(path: PathLike) -> bool:
  """Whether `path` is an object-store URI (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """An epath Path for a local path (with ~ expanded) or an object-store URI."""
  p = os.fspath(p)
  return epath.Path(p if is_remote(p) else os.path.expanduser(p))


def join(base: PathLike, *parts: str) -> str:
  """`base/parts...` as a string, for local paths and URIs alike."""
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def absolute(p: PathLike) -> str:
  """A local path made absolute (orbax wants absolute paths); URIs unchanged."""
  p = os.fspath(p)
  return p if is_remote(p) else os.path.abspath(os.path.expanduser(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_json(p: PathLike):
  return json.loads(read_text(p))


def write_bytes_atomic(p: PathLike, data: bytes) -> None:
  """Writes `p` whole, so that a crash leaves the old content or the new, never a part.

  Disk: a temporary file, flushed, renamed over `p`. Object store: one upload
  (an object becomes visible only once complete).
  """
  p = os.fspath(p)
  if is_remote(p):
    path(p).write_bytes(data)
    return
  tmp = f"{p}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text_atomic(p: PathLike, text: str) -> None:
  write_bytes_atomic(p, text.encode())


def write_json_atomic(p: PathLike, obj) -> None:
  write_text_atomic(p, json.dumps(obj, indent=2))


def save_npz(p: PathLike, **arrays) -> None:
  """np.savez of `arrays` to `p`, written whole (`write_bytes_atomic`)."""
  import numpy as np
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_atomic(p, buffer.getvalue())


def create_exclusive(p: PathLike, data: bytes) -> bool:
  """Creates `p` holding `data` unless it exists; whether it did. Of two callers, one wins.

  Disk: O_EXCL. Object store: an upload conditional on no object existing
  (GCS's `ifGenerationMatch=0`, which fsspec's `mode="create"` sends).
  """
  p = os.fspath(p)
  if not is_remote(p):
    try:
      fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return True
  import fsspec
  fs, key = fsspec.core.url_to_fs(p)
  try:
    fs.pipe_file(key, data, mode="create")
  except FileExistsError:  # gcsfs's answer to 412 Precondition Failed
    return False
  return True


def modified_time(p: PathLike) -> float:
  """Seconds since the epoch of `p`'s last write (an object's update time on a store)."""
  return float(path(p).stat().mtime)


def move_folder(src: PathLike, dst: PathLike) -> None:
  """Moves folder `src` to `dst` on the same storage; nothing is deleted before it is copied.

  Disk: one rename (atomic). Object store (no rename): every object copied,
  then the originals deleted; a crash in between leaves both copies.
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if not is_remote(src):
    os.rename(src, dst)
    return
  import fsspec
  fs, _ = fsspec.core.url_to_fs(src)
  fs.copy(src, dst, recursive=True)
  fs.rm(src, recursive=True)


def _bucket(uri: str) -> str:
  return uri.split("://", 1)[1].split("/", 1)[0]


def check_writable_folder(p: PathLike, what: str) -> None:
  """StorageError (one line naming `p` and what to do) unless files can be written under `p`.

  For a URI this writes and deletes one small object, so a missing bucket,
  missing credentials and a missing permission are all found here, before
  anything compiles, not at the first checkpoint.
  """
  p = os.fspath(p)
  if not is_remote(p):
    return
  scheme = p.split("://", 1)[0]
  if scheme == "gs":
    if importlib.util.find_spec("gcsfs") is None:  # epath's backend for gs://
      raise StorageError(f"{what} {p}: gs:// paths need gcsfs; pip install "
                         f"'ssl_jax[gcs]' (or gcsfs).")
    check_reachable(p, what)
  probe = path(p) / f".ssl_jax-write-check-{uuid.uuid4().hex[:12]}"
  try:
    probe.write_bytes(b"")
    probe.unlink()
  except FileNotFoundError:
    raise StorageError(
        f"{what} {p}: bucket {_bucket(p)!r} does not exist; create it (gcloud storage buckets "
        f"create {scheme}://{_bucket(p)}) or fix the path.") from None
  except Exception as e:  # noqa: BLE001  gcsfs and google-auth raise many types
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise StorageError(
        f"{what} {p} cannot be written ({type(e).__name__}: {first}); check the credentials "
        f"(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS) and "
        f"that they may write to bucket {_bucket(p)!r}.") from None


def check_reachable(p: PathLike, what: str) -> None:
  """StorageError (one line naming the cause) if the object store of URI `p` cannot be
  reached. gcsfs would retry a failed connection for about a minute and then blame
  the credentials; this asks the endpoint first, bounded (`ssl_jax.network`)."""
  p = os.fspath(p)
  if not p.startswith("gs://"):
    return
  from ssl_jax import network
  endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
  if reason := network.unreachable([endpoint], use_proxy=False):
    raise StorageError(f"{what} {p}: Cloud Storage cannot be reached: {reason}. Check the "
                       f"network (or STORAGE_EMULATOR_HOST), or use a local path.")


def check_readable(p: PathLike, what: str) -> None:
  """StorageError / FileNotFoundError (one line) unless `p` exists and can be read."""
  p = os.fspath(p)
  check_reachable(p, what)
  try:
    found = path(p).exists()
  except Exception as e:  # noqa: BLE001  credentials, permissions, network
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise StorageError(f"{what} {p} cannot be read ({type(e).__name__}: {first}); check the "
                       f"credentials and that they may read it.") from None
  if not found:
    raise FileNotFoundError(f"{what}: path {p} does not exist.")
