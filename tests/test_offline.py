"""No network: a TFDS source that must be downloaded, a gs:// workdir. Each is one
`error:` line within seconds, naming the real cause, with nothing left behind."""

import os
import socket
import subprocess
import sys
import time

import pytest

from ssl_jax import downloads, network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cli(tmp_path, *args, **env):
  t0 = time.time()
  proc = subprocess.run([sys.executable, "-m", "ssl_jax.main", "--config",
                         "configs/quickstart.py", *args], capture_output=True, text=True,
                        cwd=REPO, timeout=300, env=dict(os.environ, **env))
  return proc, time.time() - t0


def test_unreachable_names_the_cause():
  port = _closed_port()
  assert network.unreachable([f"http://127.0.0.1:{port}/x"]) == (
      f"127.0.0.1:{port} refused the connection (2 attempts)")
  os.environ["SSL_JAX_CONNECT_ATTEMPTS"] = "1"
  try:
    reason = network.unreachable(["https://ssl-jax-test.invalid/data.tar.gz"])
  finally:
    del os.environ["SSL_JAX_CONNECT_ATTEMPTS"]
  assert reason.startswith("cannot resolve ssl-jax-test.invalid (no network, or no DNS")
  with socket.socket() as server:   # a host that answers
    server.bind(("127.0.0.1", 0))
    server.listen()
    assert network.unreachable([f"http://127.0.0.1:{server.getsockname()[1]}"]) is None


class _FailingBuilder:
  """A TFDS builder whose download starts writing, then loses the network."""

  def __init__(self, root):
    self.data_dir_root, self.url_infos = str(root), {}

  def is_prepared(self):
    return False

  def download_and_prepare(self):
    os.makedirs(os.path.join(self.data_dir_root, "downloads", "x.tmp.123"))
    os.makedirs(os.path.join(self.data_dir_root, "cifar10", "3.0.2.incompleteABC"))
    open(os.path.join(self.data_dir_root, "downloads", "x.tmp.123", "part"), "w").write("1")
    try:
      raise ConnectionError("Max retries exceeded with url: /~kriz/cifar-10-binary.tar.gz")
    except ConnectionError as e:
      raise RuntimeError("Failed to download") from e


def test_a_failed_download_removes_what_it_began(tmp_path):
  (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)   # another dataset, kept
  with pytest.raises(downloads.DownloadFailed) as e:
    downloads.prepare(_FailingBuilder(tmp_path), "cifar10")
  assert "TFDS cifar10 could not be downloaded and prepared" in str(e.value)
  assert "ConnectionError: Max retries exceeded" in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist"]
  fresh = tmp_path / "fresh"
  with pytest.raises(downloads.DownloadFailed):
    downloads.prepare(_FailingBuilder(fresh), "cifar10")
  assert not fresh.exists()


def test_tfds_source_without_network_is_one_line_and_leaves_nothing(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  port = _closed_port()
  workdir, data_dir = tmp_path / "runs" / "q", tmp_path / "tfds"
  proc, seconds = _cli(tmp_path, "--workdir", str(workdir), "--config.data.source=tfds:cifar10",
                       f"--config.data.tfds_data_dir={data_dir}",
                       HTTPS_PROXY=f"http://127.0.0.1:{port}")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith(f"error: TFDS cifar10 is not in {data_dir} and cannot be "
                              f"downloaded: proxy 127.0.0.1:{port} refused the connection")
  assert "--config.data.source=folder:PATH" in errors[0]
  assert "Traceback" not in proc.stderr and seconds < 120
  assert not data_dir.exists() and not workdir.exists()


@pytest.mark.parametrize("host,cause", [
    ("http://127.0.0.1:{port}", "127.0.0.1:{port} refused the connection"),
    ("http://ssl-jax-test.invalid:9023", "cannot resolve ssl-jax-test.invalid"),
])
def test_gs_workdir_without_network_is_one_line_naming_the_cause(tmp_path, host, cause):
  pytest.importorskip("gcsfs")
  port = _closed_port()
  proc, seconds = _cli(tmp_path, "--workdir", "gs://bucket/run",
                       STORAGE_EMULATOR_HOST=host.format(port=port),
                       SSL_JAX_CONNECT_ATTEMPTS="1")
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: workdir gs://bucket/run: Cloud Storage cannot be reached: "
                             + cause.format(port=port)), lines[0]
  assert "credentials" not in lines[0] and seconds < 60
