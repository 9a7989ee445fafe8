"""How `trl.agents` metrics reach a stock trainer's log: `log_metrics(trainer, metrics)`.

Upstream `GRPOTrainer` keeps a per-mode store of lists (`trainer._metrics["train" | "eval"]`) that it averages into
each log line, so metrics appended there show up beside its own, in every logger the trainer reports to. Not here:
what is measured (`rollout.py`, `correction.py`).
"""

from __future__ import annotations


def log_metrics(trainer, metrics: dict[str, float]) -> None:
    """Add `metrics` to the trainer's next log line (under the trainer's current mode); nothing for other trainers."""
    store = getattr(trainer, "_metrics", None)
    if store is None:
        return
    mode = "train" if getattr(getattr(trainer, "model", None), "training", True) else "eval"
    for key, value in metrics.items():
        store[mode][key].append(float(value))
