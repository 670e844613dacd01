"""Whether a host can be reached, asked before a library that would retry for minutes.

TFDS downloads and gcsfs both retry a failed connection with back-off and
then raise chained tracebacks; with no network that is a minute or more and
a message that may blame the wrong thing (gcsfs blames credentials for a
DNS failure). `unreachable` opens one TCP connection per host, bounded by
CONNECT_SECONDS per attempt and CONNECT_ATTEMPTS attempts, and says in a
few words why it failed. The environment variables SSL_JAX_CONNECT_SECONDS
and SSL_JAX_CONNECT_ATTEMPTS change the two bounds (a slow link, a flaky
one).
"""

from __future__ import annotations

import os
import socket
import time
import urllib.parse
from typing import Iterable, Optional

CONNECT_SECONDS = 10.0
CONNECT_ATTEMPTS = 2


def _bounds() -> tuple[float, int]:
  try:
    return (float(os.environ.get("SSL_JAX_CONNECT_SECONDS", CONNECT_SECONDS)),
            max(1, int(os.environ.get("SSL_JAX_CONNECT_ATTEMPTS", CONNECT_ATTEMPTS))))
  except ValueError:
    return CONNECT_SECONDS, CONNECT_ATTEMPTS


def _proxy_for(scheme: str) -> Optional[str]:
  for key in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
    if os.environ.get(key):
      return os.environ[key]
  return None


def _connect(host: str, port: int, what: str, timeout: float) -> Optional[str]:
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return None
  except socket.gaierror as e:
    return f"cannot resolve {host} (no network, or no DNS answer: {e.strerror})"
  except ConnectionRefusedError:
    return f"{what} refused the connection"
  except (socket.timeout, TimeoutError):
    return f"{what} did not answer within {timeout:g} s"
  except OSError as e:
    return f"cannot connect to {what} ({e.strerror or e})"


def unreachable(urls: Iterable[str], use_proxy: bool = True) -> Optional[str]:
  """Why the first of `urls` whose host cannot be reached cannot be, in a few words
  ("cannot resolve storage.googleapis.com (no network, ...)", "x:443 refused the
  connection", "x:443 did not answer within 10 s"); None if every host accepts a
  connection. With `use_proxy`, the HTTP(S) proxy the environment names is asked
  instead of the host, as the downloading library would."""
  timeout, attempts = _bounds()
  seen = set()
  for url in urls:
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    proxy = _proxy_for(parts.scheme) if use_proxy else None
    target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}") \
        if proxy else parts
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host or (host, port) in seen:
      continue
    seen.add((host, port))
    for attempt in range(attempts):
      reason = _connect(host, port, f"proxy {host}:{port}" if proxy else f"{host}:{port}",
                        timeout)
      if reason is None:
        break
      if attempt + 1 < attempts:
        time.sleep(1.0)
    if reason is not None:
      return reason + (f" ({attempts} attempts)" if attempts > 1 else "")
  return None
