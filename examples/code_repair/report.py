"""The demo's report: `report.md` and PNG plots from a run folder's `metrics*.jsonl` and evaluation results.

Plots: reward per step (total and per reward function), non-empty and solved rate per step, episodes per hour, tool
calls by tool and shell command type, held-out results before/after GRPO. Not here: running anything (`demo.py`).
Usage: `report.write(run_dir, args, before, results, phases, total_seconds)` (called by `demo.py`).
"""

from __future__ import annotations

import json
from math import sqrt
from pathlib import Path
from statistics import mean, stdev
from typing import Any


HELD_OUT_KEYS = ("reward", "solved", "similarity", "non_empty")  # per held-out evaluation: mean and `<key>_se`


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


def _plot(path: Path, title: str, ylabel: str, series: dict[str, tuple[list, list]]) -> None:
    """Line plot per series over GRPO steps; the y-axis starts at 0 (so a flat or small curve reads as what it is)
    and ends 10% above the highest point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title(title)
    _steps_axis(ax)
    ax.set_ylabel(ylabel)
    top = max((y for _, ys in series.values() for y in ys), default=0.0)
    ax.set_ylim(0, max(top * 1.1, 1e-9))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seed_panels(
    path: Path, title: str, ylabel: str, panels: list[tuple[str, str, float]], metrics: dict[int, list[dict]]
) -> None:
    """One panel per (subtitle, metric key, y max): each seed a thin line, their mean per step a thick black one (a
    step's value comes from a handful of episodes, so single seeds are noisy; the mean is the curve to read)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (subtitle, key, top) in zip(axes[0], panels, strict=True):
        by_step: dict[int, list[float]] = {}
        for seed, rows in metrics.items():
            xs, ys = _column(rows, key)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, alpha=0.6, label=f"seed {seed}")
            for x, y in zip(xs, ys, strict=True):
                by_step.setdefault(x, []).append(y)
        if len(metrics) > 1:
            steps = sorted(by_step)
            ax.plot(steps, [mean(by_step[x]) for x in steps], color="black", linewidth=2.5, label="mean of seeds")
        line = reward_trend(metrics) if key == "reward" else None  # the report's own trend, drawn
        if line:
            ends = [min(by_step), max(by_step)]
            ax.plot(ends, [line["intercept"] + line["slope"] * x for x in ends], color="red", linestyle="--",
                    label=f"trend {line['slope']:+.3f}/step")  # fmt: skip
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(subtitle, fontsize=10)
        ax.set_ylim(-0.03 * top, 1.05 * top)
        ax.grid(alpha=0.3)
        _steps_axis(ax)
    axes[0][0].set_ylabel(ylabel)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trend(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares line through (step, value) points: slope per step with its standard error, and intercept (None
    with fewer than 3 points or a single step)."""
    n = len(points)
    if n < 3:
        return None
    mx, my = mean(x for x, _ in points), mean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    intercept = my - slope * mx
    residual = sum((y - intercept - slope * x) ** 2 for x, y in points)
    return {"slope": slope, "slope_se": sqrt(residual / (n - 2) / sxx), "intercept": intercept}


def reward_trend(metrics: dict[int, list[dict]]) -> dict[str, float] | None:
    """The trend of the training reward over GRPO steps, every seed's steps pooled."""
    return trend([p for rows in metrics.values() for p in zip(*_column(rows, "reward"), strict=True)])


def training_reward_section(metrics: dict[int, list[dict]]) -> list[str]:
    """The training reward's trend over GRPO steps, pooled and per seed."""
    line = reward_trend(metrics)
    if not line:
        return []
    per_seed = {s: reward_trend({s: rows}) for s, rows in metrics.items()}
    z = line["slope"] / line["slope_se"] if line["slope_se"] else float("inf")
    return [
        "## Training reward",
        "",
        f"Trend of the training reward (least squares over every seed's steps): {line['slope']:+.4f} ± "
        f"{line['slope_se']:.4f} per step ({z:+.1f} standard errors), from {line['intercept'] + line['slope']:.2f} "
        "at step 1. Per seed: " + "; ".join(f"seed {s} {t['slope']:+.3f}" for s, t in per_seed.items() if t)
        + ". Each step draws other training tasks, so single steps are noisy (`reward.png`).",
        "",
    ]  # fmt: skip


def _column(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plots(run: Path, metrics: dict[int, list[dict]], before: dict, results: dict[int, dict]) -> list[str]:
    """Write the PNGs; return their file names."""
    plt = _pyplot()
    names = []
    reward_keys = sorted(
        {k for rows in metrics.values() for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}
    )
    panels = [("total (similarity + tests, max 2)", "reward", 2.0)]
    panels += [
        (key.split("/")[1].removesuffix("_reward").replace("_", " ") + " (max 1)", key, 1.0) for key in reward_keys
    ]
    title = "Training reward per GRPO step (each step draws other tasks: the curve moves with their difficulty)"
    _seed_panels(run / "reward.png", title, "mean over the step's episodes", panels, metrics)
    names.append("reward.png")
    panels = [
        ("non-empty patch", "non_empty_rate", 1.0),
        ("solved (tests pass)", "rewards/tests_pass_reward/mean", 1.0),
    ]
    _seed_panels(run / "rates.png", "Training episodes per GRPO step", "share of the step's episodes", panels, metrics)
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
    fig, ax = plt.subplots(figsize=(8.5, 4))
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
    ax.set_ylabel("calls in the step's episodes\n(a pipeline counts each command)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(run / "tool_calls.png", dpi=110)
    plt.close(fig)
    names.append("tool_calls.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    seeds = sorted(results)
    labels = ["before\n(SFT)", *[f"after\nseed {s}" for s in seeds]]
    for ax, key, label in zip(axes, ("solved", "reward"), ("solved rate", "reward (similarity + tests)"), strict=True):
        summaries = [before, *[results[s]["after"] for s in seeds]]
        values = [r[key] for r in summaries]
        errors = [r[f"{key}_se"] for r in summaries]
        colors = ["tab:gray", *["tab:blue"] * len(seeds)]
        bars = ax.bar(range(len(values)), values, yerr=errors, capsize=4, color=colors)
        ax.bar_label(bars, fmt="%.2f", fontsize=8, label_type="center")  # a zero bar is invisible: print every value
        ax.axhline(before[key], color="tab:gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_title(f"Held-out {label}", fontsize=10)
        ax.set_ylim(0, 2 if key == "reward" else 1)
    fig.suptitle(
        "Held-out tasks before and after GRPO (bars: one standard error over episodes; the paired change, with its "
        "smaller error, is in report.md)",
        fontsize=8,
    )
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
    work = mean(r.get("agent/agent_seconds_per_episode", 0.0) for r in rows) if rows else 0.0  # already without gen
    total = sum(steps) * len(rows) / max(len(steps), 1)  # the first step's length is estimated from the others
    return {"rollouts": batch, "weight sync": sync, "training": max(total - batch - sync, 0.0),
            "per episode: waiting for the model": gen, "per episode: agent work (tools)": work}  # fmt: skip


def pooled(summaries: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Mean and standard error of `key` over the episodes of several evaluations (each its own mean and error)."""
    n = sum(s["episodes"] for s in summaries)
    value = sum(s[key] * s["episodes"] for s in summaries) / n
    return value, sqrt(sum((s[f"{key}_se"] * s["episodes"]) ** 2 for s in summaries)) / n


def screening_section(screening: dict | None) -> list[str]:
    """Which training tasks GRPO trained on, and why."""
    if not screening:
        return ["GRPO trained on every training task (no screening).", ""]
    rates, kept = screening["solved_by_task"], set(screening["kept"])
    by_rate = {rate: [t for t in sorted(rates) if rates[t] == rate] for rate in sorted(set(rates.values()))}
    return [
        "## GRPO training tasks",
        "",
        f"The SFT model ran {screening['samples']} episodes on each training task first. GRPO trained on the "
        f"{len(kept)} of {len(rates)} tasks it solved sometimes but not always (a task always or never solved gives "
        "every episode of a group the same reward, so no gradient).",
        "",
        "| solved rate | GRPO trains on them | tasks |",
        "|---|---|---|",
        *[f"| {r:.2f} | {'yes' if set(ts) <= kept else 'no'} | {', '.join(ts)} |" for r, ts in by_rate.items()],
        "",
    ]


def paired_change(before: dict, afters: list[dict]) -> dict:
    """The change GRPO made, pair by pair: for each `task#k` every evaluation has, the mean over seeds of its reward
    (and solved) after GRPO minus before; their mean, standard error and count."""
    keys = sorted(set(before["by_episode"]).intersection(*(a["by_episode"] for a in afters)))
    out: dict[str, float] = {"pairs": len(keys)}
    for name in ("reward", "solved"):
        diffs = [mean(a["by_episode"][k][name] for a in afters) - before["by_episode"][k][name] for k in keys]
        out[name] = mean(diffs) if diffs else 0.0
        out[f"{name}_se"] = stdev(diffs) / sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return out


def held_out_section(args, before: dict, results: dict[int, dict]) -> list[str]:
    """The before/after table (pooled over seeds, with the change GRPO made and its standard error) and the solved
    rate per task."""
    seeds = sorted(results)
    afters = [results[s]["after"] for s in seeds]
    tasks = sorted(before["solved_by_task"])
    rows = [
        ("before GRPO (the SFT model)", before),
        *[(f"after GRPO, seed {s}", a) for s, a in zip(seeds, afters, strict=True)],
    ]

    def cells(summaries: list[dict]) -> str:
        out = []
        for key in HELD_OUT_KEYS:
            value, se = pooled(summaries, key)
            out.append(f"{value:.3f} ± {se:.3f}" if key in ("reward", "solved") else f"{value:.3f}")
        return " | ".join(out)

    lines = [
        "## Held-out tasks, before and after GRPO",
        "",
        f"The {len(tasks) or '?'} tasks of the `{args.eval_split}` split are never trained on. Before GRPO: the SFT "
        f"model once ({before['episodes']} episodes; every seed starts from it). After GRPO: {args.eval_samples} "
        "episodes per task per seed. Same sampling settings. ± is one standard error over episodes.",
        "",
        "| model | episodes | reward | solved | similarity | non-empty |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {s['episodes']} | {cells([s])} |" for name, s in rows],
    ]
    if len(afters) > 1:
        lines.append(f"| after GRPO, all seeds | {sum(a['episodes'] for a in afters)} | {cells(afters)} |")
    change = []
    for key in ("reward", "solved"):
        (b, b_se), (a, a_se) = pooled([before], key), pooled(afters, key)
        change.append(f"{key} {a - b:+.3f} ± {sqrt(a_se**2 + b_se**2):.3f}")
    rose = sum(a["reward"] > before["reward"] for a in afters)
    paired = paired_change(before, afters)
    lines += [
        "",
        f"**Change from GRPO** (after, all seeds, minus before): {'; '.join(change)}. Seeds whose held-out reward "
        f"rose: {rose} of {len(afters)}.",
        "",
        f"**Paired change** over the {paired['pairs']} (task, sample) pairs evaluated before and after (episode k of "
        "a task samples every reply with the same seed in every evaluation, so a pair differs only where the policy "
        "changed; per pair, the mean over seeds minus before): "
        + "; ".join(f"{k} {paired[k]:+.3f} ± {paired[f'{k}_se']:.3f}" for k in ("reward", "solved"))
        + ".",
        "",
        "`reward` = diff similarity + tests pass (the GRPO reward, both weight 1); `solved` = share of episodes whose "
        "hidden tests pass; `non-empty` = share with a non-empty patch. Failed evaluation episodes (counted as 0): "
        + "; ".join(f"{name}: {s['failed_episodes']:.0f}" for name, s in rows)
        + ".",
        "",
    ]
    if tasks:
        lines += [
            "Solved rate per held-out task:",
            "",
            "| task | before | " + " | ".join(f"after, seed {s}" for s in seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
            *[f"| {t} | {before['solved_by_task'][t]:.2f} | "
              + " | ".join(f"{a['solved_by_task'][t]:.2f}" for a in afters) + " |"
              for t in tasks],
            "",
        ]  # fmt: skip
    return lines


def write(
    run: Path,
    args,
    before: dict,
    results: dict[int, dict],
    phases: dict[str, float],
    total: float,
    screening: dict | None = None,
) -> Path:
    """Write `report.md` (and the plots) into `run`. `before`: the held-out evaluation of the SFT model; `results`:
    per seed, the held-out evaluation after GRPO (`after`) and the metrics file name; `screening`: the training tasks
    GRPO kept (`kept`) from the SFT model's solved rate on each (`solved_by_task`, `samples` episodes each)."""
    metrics = {s: load_metrics(run / r["metrics"]) for s, r in results.items()}
    pictures = plots(run, metrics, before, results)
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
        *screening_section(screening),
        *held_out_section(args, before, results),
        *training_reward_section(metrics),
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
        json.dumps(
            {"before": before, "screening": screening, "results": results, "phases": phases, "total_seconds": total},
            indent=1,
        )
    )
    return path
