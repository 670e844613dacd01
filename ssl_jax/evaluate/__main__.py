"""kNN and linear top-1 of a training run's latest checkpoint.

    python -m ssl_jax.evaluate --workdir runs/c10

Restores the latest checkpoint in `--workdir` with the config the run saved
there, embeds both splits (each process its own rows), runs the kNN and the
linear probe over every device, prints them and writes `<workdir>/eval.json`.

(The entry point only: the command lives with the shell,
`ssl_jax.cli.evaluate_command`, so the evaluation library imports no command line.)
"""

from ssl_jax import cli

if __name__ == "__main__":
  cli.evaluate_command()
