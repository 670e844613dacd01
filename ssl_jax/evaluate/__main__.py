"""kNN and linear top-1 of a training run's latest checkpoint.

    python -m ssl_jax.evaluate --workdir runs/c10

Restores the latest checkpoint in `--workdir` with the config the run saved
there, embeds both splits (each process its own rows), runs the kNN and the
linear probe over every device, prints them and writes `<workdir>/eval.json`.
With `--train_data SRC --test_data SRC` it fits and tests on another labelled
dataset instead (`ssl_jax/evaluate/other_data.py`), written under eval.json's
`datasets`.

(The entry point only: the command lives with the shell,
`ssl_jax.cli.evaluate_command`, so the evaluation library imports no command line.)
"""

from ssl_jax import cli

if __name__ == "__main__":
  cli.evaluate_command()
