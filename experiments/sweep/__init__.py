"""Variants x seeds of one base config: resumable runs and their aggregate.

An experiment config (e.g. `experiments/ablation/config.py`) holds

    config.base      the training config every run starts from
    config.variants  ((name, "field=value field=value ..."), ...)
    config.seeds     (0, 1, ...)

One module per concern:

    overrides  variant names and `field=value` overrides, checked against the base
    runs       each (variant, seed) trained once, resumed, or read back (run reuse)
    presets    the cpu/gpu training configs experiments start from
    stats      accuracies and costs over seeds (curves, equal time, mean and spread)
    report     Markdown tables, the results files (written atomically)
    plots      matplotlib figures (optional)
    cli        `python -m experiments.<name>.run --config ... --workdir ...`

Everything a runner uses is re-exported here, so runners write `sweep.run_one`,
`sweep.markdown_table`, ...
"""

from experiments.sweep.cli import main
from experiments.sweep.overrides import (SweepError, Variant, parse_value, parse_variants,
                                         variant_config)
from experiments.sweep.plots import pyplot, save_figure, variants_plot
from experiments.sweep.presets import experiment_config, preset_base
from experiments.sweep.report import (describe, fewer_seeds, fewer_seeds_in_rows, knn_lead,
                                      markdown_table, variants_table, write_report,
                                      write_results)
from experiments.sweep.runs import (IGNORED_FIELDS, config_differences, count_params, run_one,
                                    run_sweep)
from experiments.sweep.stats import (Stat, aggregate, equal_time, knn_at_seconds, knn_by_epoch,
                                     rows_of, seconds_by_epoch, to_json, training_seconds)

__all__ = [
    "IGNORED_FIELDS", "Stat", "SweepError", "Variant", "aggregate", "config_differences",
    "count_params", "describe", "equal_time", "experiment_config", "fewer_seeds",
    "fewer_seeds_in_rows", "knn_at_seconds", "knn_by_epoch", "knn_lead", "main",
    "markdown_table", "parse_value", "parse_variants", "preset_base", "pyplot", "rows_of",
    "run_one", "run_sweep", "save_figure", "seconds_by_epoch", "to_json", "training_seconds",
    "variant_config", "variants_plot", "variants_table", "write_report", "write_results",
]
