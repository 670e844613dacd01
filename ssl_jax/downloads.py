"""Preparing a TFDS dataset that is not on disk yet: a bounded, one-line failure.

`tfds.builder(...).download_and_prepare()` alone, with no network, retries
for minutes and ends in pages of chained tracebacks, leaving half-made
folders in the data dir. `prepare` instead:

  1. asks whether the builder is prepared already (then nothing is fetched);
  2. opens one TCP connection to each host the dataset downloads from (or to
     the HTTPS proxy, where one is set; `ssl_jax.network`), and stops with one
     line naming the cause (no DNS answer, a refused connection, a timeout)
     before TFDS starts anything;
  3. runs TFDS's download and preparation, and on any failure removes every
     file and folder it added to the data dir and says why in one line.
"""

from __future__ import annotations

import os
import shutil

from ssl_jax import network


class DownloadFailed(ValueError):
  """A TFDS dataset could not be downloaded; nothing it began is left on disk (a user
  error, like sources.DataError, which this module does not import: sources imports it)."""


def _entries(root: str) -> set[str]:
  """Every path under `root` down to three levels (dataset/version/files, downloads/...)."""
  found = set()
  if not os.path.isdir(root):
    return found
  for dirpath, dirnames, filenames in os.walk(root):
    depth = os.path.relpath(dirpath, root).count(os.sep)
    for name in dirnames + filenames:
      found.add(os.path.join(dirpath, name))
    if depth >= 2:
      dirnames[:] = []
  return found


def _remove_new(root: str, before: set[str], root_existed: bool) -> None:
  if not root_existed:
    shutil.rmtree(root, ignore_errors=True)
    return
  for p in sorted(_entries(root) - before, key=len):
    if os.path.isdir(p) and not os.path.islink(p):
      shutil.rmtree(p, ignore_errors=True)
    elif os.path.lexists(p):
      os.remove(p)


def _cause(error: BaseException) -> str:
  """The innermost exception's first line (TFDS chains several around a network error)."""
  while error.__cause__ is not None or (error.__context__ is not None
                                        and not error.__suppress_context__):
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def prepare(builder, name: str) -> None:
  """Downloads and prepares a TFDS builder's dataset unless it is prepared already;
  DownloadFailed (one line, nothing left behind) when that cannot be done."""
  if builder.is_prepared():
    return
  # <root>/<name>/<version> is the builder's data_dir (data_dir_root is newer API).
  root = os.path.expanduser(str(getattr(builder, "data_dir_root", None)
                                or os.path.dirname(os.path.dirname(str(builder.data_dir)))))
  where = root.replace(os.path.expanduser("~"), "~", 1)
  # A download_and_prepare that is not TFDS's own fetches nothing to probe for
  # (tfds.testing.mock_data replaces it with a no-op).
  real = getattr(type(builder).download_and_prepare, "__module__", "").startswith(
      "tensorflow_datasets.core")
  urls = list(getattr(builder, "url_infos", None) or {}) if real else []
  if reason := network.unreachable(urls):
    raise DownloadFailed(f"TFDS {name} is not in {where} and cannot be downloaded: {reason}. "
                         f"Nothing was written there.")
  root_existed = os.path.isdir(root)
  before = _entries(root)
  try:
    builder.download_and_prepare()
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001  TFDS raises many types
    _remove_new(root, before, root_existed)
    if isinstance(e, KeyboardInterrupt):
      raise
    raise DownloadFailed(f"TFDS {name} could not be downloaded and prepared in {where} "
                         f"({_cause(e)}); what it had begun there was removed.") from None
