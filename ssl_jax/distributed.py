"""Joining several processes into one run through JAX's distributed runtime.

Every process runs the same command. The run is multi-process when

  - the environment names a coordinator: JAX_COORDINATOR_ADDRESS (host:port),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (locally, or on GPU nodes without a
    scheduler), or
  - SLURM started several tasks (SLURM_NTASKS > 1), or a TPU pod slice has
    several workers (TPU_WORKER_HOSTNAMES lists more than one): JAX's own
    cluster auto-detection then fills in everything.

Otherwise nothing is initialised and the run is single-process, unchanged.
"""

from __future__ import annotations

import os

import jax

# A process that stops answering is declared dead after this long; the others
# then fail with an error instead of waiting forever in a collective.
# SSL_JAX_HEARTBEAT_SECONDS overrides it (the tests use a short one).
HEARTBEAT_TIMEOUT_SECONDS = int(os.environ.get("SSL_JAX_HEARTBEAT_SECONDS", "30"))


def requested() -> bool:
  """Whether the environment asks for a multi-process run."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize() -> bool:
  """Initialises jax.distributed if the environment asks for it; returns whether it did.

  Must run before anything touches a JAX backend.
  """
  if not requested():
    return False
  # CPU processes exchange collectives over gloo (GPUs and TPUs have their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    try:
      num, pid = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and "
                       "JAX_PROCESS_ID must be integers too.") from e
    jax.distributed.initialize(address, num, pid,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
  else:
    jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
  return True


def finish() -> None:
  """Waits for every process to reach the end, then leaves the runtime together.

  Without the barrier a process that finishes first shuts down while a peer
  still waits for it, and the peer hangs until the shutdown timeout.
  """
  from jax.experimental import multihost_utils
  multihost_utils.sync_global_devices("ssl_jax: end of run")
  jax.distributed.shutdown()
