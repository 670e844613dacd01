"""Accuracies and costs over seeds: per-epoch curves, equal-time accuracy, mean and spread."""

from __future__ import annotations

import dataclasses


def training_seconds(summary: dict) -> float:
  """Seconds spent in training steps (evaluation excluded), compilation included."""
  if "train_seconds" in summary:
    return float(summary["train_seconds"])
  return float(sum(r["epoch_seconds"] for r in summary["history"]))  # older summaries


def knn_by_epoch(summary: dict) -> dict[int, float]:
  """{epoch: kNN top-1}, with epoch 0 the untrained network and the final epoch."""
  out = {0: summary["knn_top1_init"]}
  out.update({r["epoch"]: r["knn_top1"] for r in summary["history"] if "knn_top1" in r})
  out[summary["epochs"]] = summary["knn_top1"]
  return out


def seconds_by_epoch(summary: dict) -> dict[int, float]:
  """{epoch: training seconds up to the end of that epoch}, with 0 at epoch 0."""
  out, elapsed = {0: 0.0}, 0.0
  for r in summary["history"]:
    elapsed += r["epoch_seconds"]
    out[r["epoch"]] = elapsed
  return out


def knn_at_seconds(summary: dict, budget: float) -> float:
  """kNN top-1 after `budget` training seconds, interpolated between evaluations.

  A run that finished within the budget keeps its final accuracy.
  """
  seconds = seconds_by_epoch(summary)
  points = sorted((seconds[e], knn) for e, knn in knn_by_epoch(summary).items())
  if budget >= points[-1][0]:
    return points[-1][1]
  for (t0, a0), (t1, a1) in zip(points, points[1:]):
    if t0 <= budget <= t1:
      return a0 + (a1 - a0) * (budget - t0) / (t1 - t0) if t1 > t0 else a1
  return points[0][1]


def equal_time(results: dict[str, list[dict]]) -> tuple[float, dict[str, "Stat"]]:
  """(budget, {variant: kNN after budget seconds}) with the budget the shortest run's time.

  Compares variants at equal wall-clock: a variant with a slower step has
  done fewer epochs by then.
  """
  runs = [s for ss in results.values() for s in ss]
  budget = min(training_seconds(s) for s in runs)
  return budget, {name: Stat(tuple(knn_at_seconds(s, budget) for s in ss))
                  for name, ss in results.items() if ss}


@dataclasses.dataclass(frozen=True)
class Stat:
  """A metric over seeds."""
  values: tuple[float, ...]

  @property
  def mean(self) -> float:
    return sum(self.values) / len(self.values)

  @property
  def spread(self) -> float:
    """Half the range over seeds (0 for one seed)."""
    return (max(self.values) - min(self.values)) / 2

  def to_json(self) -> dict:
    return {"mean": self.mean, "min": min(self.values), "max": max(self.values),
            "values": list(self.values)}

  def pct(self) -> str:
    if len(self.values) == 1:
      return f"{100 * self.mean:.2f}"
    return f"{100 * self.mean:.2f} ± {100 * self.spread:.2f}"


def aggregate(summaries: list[dict]) -> dict:
  """Mean and spread over seeds of one variant's accuracies and costs."""
  stat = lambda xs: Stat(tuple(float(x) for x in xs))
  epochs = sorted(set.intersection(*(set(knn_by_epoch(s)) for s in summaries)))
  return {
      "seconds_by_epoch": {e: stat(seconds_by_epoch(s)[e] for s in summaries) for e in epochs},
      "seeds": [s["seed"] for s in summaries],
      "num_train_examples": summaries[0]["num_train_examples"],
      "num_params": summaries[0]["num_params"],
      "knn_top1_by_epoch": {e: stat(knn_by_epoch(s)[e] for s in summaries) for e in epochs},
      "knn_top1": stat(s["knn_top1"] for s in summaries),
      "linear_top1": stat(s["linear_top1"] for s in summaries),
      "seconds_per_epoch": stat(s["seconds_per_epoch"] for s in summaries),
      "images_per_second": stat(s["images_per_second"] for s in summaries),
      "training_seconds": stat(training_seconds(s) for s in summaries),
  }


def to_json(obj):
  """JSON-ready copy of aggregate() output (Stat objects become dicts)."""
  if isinstance(obj, Stat):
    return obj.to_json()
  if isinstance(obj, dict):
    return {str(k): to_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_json(v) for v in obj]
  return obj


def rows_of(results: dict[str, list[dict]]) -> dict[str, dict]:
  """aggregate() of every variant with at least one finished run."""
  return {name: aggregate(runs) for name, runs in results.items() if runs}
