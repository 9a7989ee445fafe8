"""The demo's report: `report.md` and PNG plots from a run folder's `metrics*.jsonl` and evaluation results.

Plots: reward per step (total and per reward function), non-empty and solved rate per step, episodes per hour, tool
calls by tool and shell command type, held-out results before/after GRPO. Not here: running anything (`demo.py`).
Usage: `report.write(run_dir, args, results, phases, total_seconds)` (called by `demo.py`).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, pstdev
from typing import Any


def load_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _steps_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("GRPO step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _plot(
    path: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]], ymin: float = 0.0,
    ymax: float | None = None, ymax_at_least: float = 1e-9,
) -> None:  # fmt: skip
    """Line plot per series over GRPO steps; the y-axis starts at `ymin` (so a flat or small curve reads as what
    it is) and ends at `ymax`, or 10% above the highest point but not below `ymax_at_least`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(title)
    _steps_axis(ax)
    ax.set_ylabel(ylabel)
    top = max((y for _, ys in series.values() for y in ys), default=0.0)
    ax.set_ylim(ymin, ymax if ymax is not None else max(top * 1.1, ymax_at_least))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _column(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plots(run: Path, metrics: dict[int, list[dict]], results: dict[int, dict]) -> list[str]:
    """Write the PNGs; return their file names."""
    plt = _pyplot()
    names = []
    reward_keys = sorted(
        {k for rows in metrics.values() for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}
    )
    series = {}
    for seed, rows in metrics.items():
        series[f"seed {seed}: total"] = _column(rows, "reward")
        for key in reward_keys:
            series[f"seed {seed}: {key.split('/')[1]}"] = _column(rows, key)
    _plot(run / "reward.png", "Training reward per step (mean over the step's episodes)", "reward (max 2)", series,
          ymin=-0.02, ymax_at_least=1.0)  # fmt: skip
    names.append("reward.png")

    series = {}
    for seed, rows in metrics.items():
        series[f"seed {seed}: non-empty patch"] = _column(rows, "non_empty_rate")
        series[f"seed {seed}: solved (tests pass)"] = _column(rows, "rewards/tests_pass_reward/mean")
    _plot(run / "rates.png", "Share of training episodes per step", "share of episodes", series, ymin=-0.05, ymax=1.05)
    names.append("rates.png")

    series = {f"seed {seed}": _column(rows, "agent/episodes_per_hour") for seed, rows in metrics.items()}
    _plot(
        run / "episodes_per_hour.png",
        "Agent episodes per hour (rollout phase of each step)",
        "episodes / hour",
        series,
    )
    names.append("episodes_per_hour.png")

    seed, rows = next(iter(metrics.items()))
    kinds = sorted({k for r in rows for k in r if k.startswith("shell_cmd_")})
    tools = sorted({k for r in rows for k in r if k.startswith("agent/tool_calls/")})
    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(rows)
    steps = [r["step"] for r in rows]
    for key in kinds:
        values = [r.get(key, 0) for r in rows]
        ax.bar(steps, values, bottom=bottom, label=f"shell: {key.removeprefix('shell_cmd_')}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for key in tools:
        if key.endswith("/shell"):
            continue
        values = [r.get(key, 0) for r in rows]
        # "tool: " in front: matplotlib hides labels starting with "_", and a model may invent any tool name
        ax.bar(steps, values, bottom=bottom, label=f"tool: {key.removeprefix('agent/tool_calls/')}", hatch="//")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title(f"Tool calls per step (seed {seed}): shell by command, other tools hatched", fontsize=10)
    _steps_axis(ax)
    ax.set_ylabel("calls in the step's episodes")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(run / "tool_calls.png", dpi=110)
    plt.close(fig)
    names.append("tool_calls.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, label in zip(axes, ("solved", "similarity"), ("solved rate", "diff similarity"), strict=True):
        seeds = sorted(results)
        width = 0.38
        xs = range(len(seeds))
        for shift, when, label_ in ((-width / 2, "before", "after SFT"), (width / 2, "after", "after GRPO")):
            bars = ax.bar([x + shift for x in xs], [results[s][when][key] for s in seeds], width, label=label_)
            ax.bar_label(bars, fmt="%.2f", fontsize=8)  # a zero bar is invisible: print every value
        ax.set_xticks(list(xs), [f"seed {s}" for s in seeds])
        ax.set_title(f"Held-out {label}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "held_out.png", dpi=110)
    plt.close(fig)
    names.append("held_out.png")
    return names


def time_split(rows: list[dict]) -> dict[str, float]:
    """Seconds of one seed's GRPO: rollouts (agent episodes), weight sync, and training (the rest of each step)."""
    batch = sum(r.get("agent/batch_seconds", 0.0) for r in rows)
    sync = sum(r.get("weight_sync/seconds", 0.0) for r in rows)
    steps = [b["time"] - a["time"] for a, b in zip(rows, rows[1:], strict=False)]
    gen = mean(r.get("agent/generation_seconds_per_episode", 0.0) for r in rows) if rows else 0.0
    work = mean(r.get("agent/agent_seconds_per_episode", 0.0) for r in rows) if rows else 0.0
    total = sum(steps) * len(rows) / max(len(steps), 1)  # the first step's length is estimated from the others
    return {"rollouts": batch, "weight sync": sync, "training": max(total - batch - sync, 0.0),
            "per episode: waiting for the model": gen, "per episode: agent work (tools)": work - gen}  # fmt: skip


def write(run: Path, args, results: dict[int, dict], phases: dict[str, float], total: float) -> Path:
    """Write `report.md` (and the plots) into `run`."""
    metrics = {s: load_metrics(run / r["metrics"]) for s, r in results.items()}
    pictures = plots(run, metrics, results)
    keys = ("reward", "similarity", "solved", "non_empty")
    lines = [
        f"# Demo run `{run.name}`",
        "",
        "The whole loop on CPU: scripted-expert trajectories -> SFT (masking collator) -> `trl vllm-serve-async` -> "
        "GRPO with the coding agent (diff similarity + tests-pass rewards, weight sync after every step) -> "
        "held-out evaluation before and after GRPO with the same sampling settings.",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| `{k}` | `{v}` |" for k, v in sorted(vars(args).items())],
        "",
        f"Seeds: {', '.join(map(str, sorted(results)))} (GRPO seed; all seeds start from the same SFT model).",
        "",
        f"## Held-out tasks ({args.eval_split} split, {args.eval_samples} episodes per task), before and after GRPO",
        "",
        "| seed | " + " | ".join(f"{k} before | {k} after" for k in keys) + " |",
        "|---|" + "---|" * (2 * len(keys)),
    ]
    for seed in sorted(results):
        b, a = results[seed]["before"], results[seed]["after"]
        lines.append(f"| {seed} | " + " | ".join(f"{b[k]:.3f} | {a[k]:.3f}" for k in keys) + " |")
    if len(results) > 1:
        cells = []
        for k in keys:
            before = [results[s]["before"][k] for s in results]
            after = [results[s]["after"][k] for s in results]
            cells.append(f"{mean(before):.3f} ± {pstdev(before):.3f} | {mean(after):.3f} ± {pstdev(after):.3f}")
        lines.append("| mean ± sd | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`reward` = diff similarity + tests pass (the GRPO reward, both weight 1); `solved` = share of episodes whose "
        "hidden tests pass; `non_empty` = share with a non-empty patch. Failed evaluation episodes (counted as 0): "
        + ", ".join(
            f"seed {s} {results[s]['before'].get('failed_episodes', 0):.0f} before / "
            f"{results[s]['after'].get('failed_episodes', 0):.0f} after"
            for s in sorted(results)
        )
        + ".",
        "",
        "## Time",
        "",
        f"Total {total:.0f} s.",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds:.0f} |" for name, seconds in phases.items()],
        "",
    ]
    for seed, rows in metrics.items():
        split = time_split(rows)
        lines += [f"GRPO seed {seed}, {len(rows)} steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in split.items()), ""]
    lines += ["## Plots", "", *[f"![{p}]({p})" for p in pictures], ""]
    path = run / "report.md"
    path.write_text("\n".join(lines))
    (run / "results.json").write_text(
        json.dumps({"results": results, "phases": phases, "total_seconds": total}, indent=1)
    )
    return path
