"""Dataset transformations for the SFT stage: keep the trajectories whose reward passes a bar (best-of-N).

Rejection sampling as the original diary describes it: sample N episodes per task, keep those whose reward (e.g.
diff similarity) is at least `threshold`, optionally only the `top_k` best per task, then fine-tune on them with
`DataCollatorForAgentTrajectories`. Not here: computing rewards (see `examples/`).
"""

from __future__ import annotations


def filter_by_reward(dataset, threshold: float, reward_column: str = "reward", group_column=None, top_k=None):
    """Rows of `dataset` (a `datasets.Dataset`) with `reward_column >= threshold`; with `group_column` and `top_k`,
    at most the `top_k` highest-reward such rows per group (ties keep the earlier row)."""
    if reward_column not in dataset.column_names:
        raise ValueError(f"no column {reward_column!r} in the dataset (columns: {dataset.column_names})")
    if top_k is not None and group_column is None:
        raise ValueError("top_k needs group_column: the column naming the task each row belongs to")
    if group_column is not None and group_column not in dataset.column_names:
        raise ValueError(f"no column {group_column!r} in the dataset (columns: {dataset.column_names})")
    rewards = dataset[reward_column]
    keep = [i for i, r in enumerate(rewards) if r is not None and r >= threshold]
    if top_k is not None:
        groups = dataset[group_column]
        ranked = sorted(keep, key=lambda i: (-rewards[i], i))
        taken: dict = {}
        keep = sorted(i for i in ranked if taken.setdefault(groups[i], []).append(i) or len(taken[groups[i]]) <= top_k)
    return dataset.select(keep)
