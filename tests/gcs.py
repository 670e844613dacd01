"""A local Google Cloud Storage emulator for the `gs://` tests (offline, 127.0.0.1 only).

`gcp-storage-emulator` runs in a child process, in memory (`python -m
tests.gcs PORT BUCKET`), with what it lacks of the GCS JSON API and orbax's
storage layer and the workdir lock need: downloads carry the object's
generation (`x-goog-generation`), and reads and uploads honour
`ifGenerationMatch` and `ifGenerationNotMatch`. Tensorstore's OCDBT commits a
checkpoint's manifest by such conditional requests (without them a save fails
now and then with "Malformed StorageGeneration", seen with the emulator as
released), and the lock is an upload conditional on no object existing. The
emulator serves one request at a time, so a check and the write it guards
cannot interleave with another request. The environment
points every client at it: gcsfs (epath's gs:// backend) and
google-cloud-storage (tensorboardX) through STORAGE_EMULATOR_HOST,
tensorstore (orbax's array storage) through TENSORSTORE_GCS_HTTP_URL, with a
fake token so that neither looks for real credentials.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator

BUCKET = "ssl-jax-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(port: int) -> dict[str, str]:
  url = f"http://127.0.0.1:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,        # gcsfs, google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,     # orbax's tensorstore
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: no credential search
      "GOOGLE_CLOUD_PROJECT": "ssl-jax-test",
      # gcsfs's gRPC bucket-type probe times out (60 s) against an emulator.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "EPATH_USE_TF": "false",
  }


@contextlib.contextmanager
def emulator(log_path: str) -> Iterator[dict[str, str]]:
  """Runs the emulator with bucket BUCKET; yields the environment that points at it."""
  port = _free_port()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gcs", str(port), BUCKET], stdout=log,
        stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    deadline = time.time() + 30
    while True:
      try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"the GCS emulator did not start; see {log_path}")
        time.sleep(0.1)
    yield environment(port)
  finally:
    proc.terminate()
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      proc.kill()


def _serve(port: int, bucket: str) -> None:
  """The emulator, its object handlers wrapped with GCS's generation preconditions."""
  from http import HTTPStatus
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def generation(storage, bucket_name, name):
    try:
      return storage.get_file_obj(bucket_name, name)["generation"]
    except NotFound:
      return None

  def refused(request, storage, name):
    """The status a failed precondition answers with, or None when they hold."""
    current = generation(storage, request.params["bucket_name"], name)
    match = request.query.get("ifGenerationMatch")
    if match and ((match[0] == "0") != (current is None) or match[0] not in ("0", current)):
      return HTTPStatus.PRECONDITION_FAILED
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match and current is not None and not_match[0] == current:
      return HTTPStatus.NOT_MODIFIED
    return None

  def reading(handler):
    def wrapped(request, response, storage, *args, **kwargs):
      status = refused(request, storage, request.params["object_id"])
      if status is not None:
        response.status = status
        return None
      current = generation(storage, request.params["bucket_name"], request.params["object_id"])
      if current is not None:
        response["x-goog-generation"] = current
      return handler(request, response, storage, *args, **kwargs)
    return wrapped

  def uploading(handler):
    def wrapped(request, response, storage, *args, **kwargs):
      name = request.query.get("name", [None])[0]
      if name is None and request.query.get("uploadType") == ["multipart"]:
        name = (request.data or {}).get("meta", {}).get("name")  # parsed once, kept
      if name is not None and (status := refused(request, storage, name)) is not None:
        response.status = status
        return None
      return handler(request, response, storage, *args, **kwargs)
    return wrapped

  objects.download = reading(objects.download)
  objects.get = reading(objects.get)
  objects.insert = uploading(objects.insert)
  from gcp_storage_emulator import server  # builds its routes from the wrapped handlers
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]), sys.argv[2])
