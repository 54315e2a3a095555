"""Figures and views for the notebooks; they read run outputs and return objects to show."""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from slmlib.encode import IGNORE, Encoded


def setup() -> None:
    sns.set_theme(context="notebook", style="whitegrid")


def token_lengths(lengths_by_source: dict[str, list[int]], max_length: int, title: str = ""):
    """Histogram of rendered lengths per source with the context window marked."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, lengths in lengths_by_source.items():
        sns.histplot(lengths, ax=ax, label=f"{name} (n={len(lengths)})", element="step", fill=False, bins=40)
    ax.axvline(max_length, color="crimson", linestyle="--", label=f"window {max_length}")
    ax.set_xlabel("tokens per trajectory")
    ax.set_title(title or "Token lengths against the context window")
    ax.legend()
    fig.tight_layout()
    return fig


def mask_html(enc: Encoded, tokenizer) -> str:
    """Learned tokens in green, context in grey: what the loss sees."""
    spans = []
    for tok, lab in zip(enc.input_ids, enc.labels):
        text = html.escape(tokenizer.decode([tok])).replace("\n", "↵<br>")
        color = "#c8f7c5" if lab != IGNORE else "#eeeeee"
        spans.append(f'<span style="background:{color}">{text}</span>')
    return '<div style="font-family:monospace;font-size:11px;white-space:pre-wrap">' + "".join(spans) + "</div>"


def training_curves(log: list[dict], title: str = ""):
    """Loss and learning rate per optimizer step, from ``train_log.jsonl``."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [e["step"] for e in log]
    sns.lineplot(x=steps, y=[e["loss"] for e in log], ax=ax1, marker="o")
    ax1.set(xlabel="optimizer step", ylabel="training loss (learned tokens)", title=title or "Training loss")
    sns.lineplot(x=steps, y=[e["learning_rate"] for e in log], ax=ax2, marker="o", color="darkorange")
    ax2.set(xlabel="optimizer step", ylabel="learning rate", title="Schedule")
    fig.tight_layout()
    return fig


def pass_rate_by_group(table, task_set: str):
    """Pass rate per group with 95% Wilson intervals, one bar per model."""
    t = table[table["task_set"] == task_set]
    groups, models = list(dict.fromkeys(t["group"])), list(dict.fromkeys(t["model"]))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4))
    palette = sns.color_palette(n_colors=max(1, len(models)))
    for i, (model, color) in enumerate(zip(models, palette)):
        d = t[t["model"] == model].set_index("group").reindex(groups)
        x = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
        ax.bar(x, d["pass_rate"], width, label=model, color=color)
        ax.errorbar(x, d["pass_rate"], yerr=[d["pass_rate"] - d["ci_low"], d["ci_high"] - d["pass_rate"]],
                    fmt="none", color="black", capsize=3)
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set(ylim=(0, 1), ylabel="pass rate (offline judge)", title=f"{task_set}: pass rate by group, 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


QUALITY = {"format_valid_rate": "format-valid steps", "call_match_rate": "gold calls matched", "pass_rate": "pass rate"}


def call_quality(table):
    """Format validity, call match and pass rate per model, one panel per task set.

    When every pass rate is near zero this is where the models still differ.
    """
    t = table[table["group"] == "overall"].melt(id_vars=["model", "task_set"], value_vars=list(QUALITY),
                                                var_name="metric", value_name="rate")
    t["metric"] = t["metric"].map(QUALITY)
    sets = sorted(t["task_set"].unique())
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 3.8), squeeze=False, sharey=True)
    for ax, task_set in zip(axes[0], sets):
        sns.barplot(data=t[t["task_set"] == task_set], x="metric", y="rate", hue="model", ax=ax)
        ax.set(ylim=(0, 1), xlabel="", ylabel="rate (offline judge)", title=task_set)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_breakdown(preds):
    """Episodes per primary error label, per model (passed episodes included for scale)."""
    counts = preds.groupby(["model", "label"]).size().rename("episodes").reset_index()
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data=counts, y="label", x="episodes", hue="model", ax=ax, orient="h")
    ax.set(title="Primary error label per episode", xlabel="episodes", ylabel="")
    fig.tight_layout()
    return fig


def speed_and_cost(table):
    """Seconds per task and hours per 1,000 tasks on this hardware, per model and task set."""
    t = table[table["group"] == "overall"].assign(hours_per_1000=lambda d: d["seconds_per_task"] * 1000 / 3600)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(data=t, x="task_set", y="hours_per_1000", hue="model", ax=ax)
    ax.set(ylabel="hours per 1,000 tasks", xlabel="", title="Evaluation cost on this machine")
    fig.tight_layout()
    return fig


def learning_curve(curve: dict):
    """Teacher-forced next-call accuracy by call position, and episode pass rate, against supervised tokens seen
    (``eval/curve/curve.json``), with the paper's budget marked where it is known."""
    points = curve["points"]
    fig, ax = plt.subplots(figsize=(8, 4))
    tokens = [p["supervised_tokens_seen"] for p in points]
    positions = sorted({k.removeprefix("call_match_at_") for p in points for k in p if k.startswith("call_match_at_")})
    for pos, color in zip(positions, sns.color_palette("Blues_r", n_colors=max(1, len(positions)))):
        ax.plot(tokens, [p.get(f"call_match_at_{pos}", np.nan) for p in points], marker="o", color=color,
                label=f"next call right, call {pos} (teacher-forced)")
    episodes = [(t, p["pass_rate"]) for t, p in zip(tokens, points) if "pass_rate" in p]
    if episodes:
        ax.plot(*zip(*episodes), marker="s", color="crimson", linewidth=2, label="episode pass rate")
    paper = curve.get("paper_supervised_tokens")
    if paper:
        ax.axvline(paper, color="grey", linestyle="--", label=f"the paper's budget (~{paper / 1e6:.1f}M, estimated)")
    ax.set_xscale("log")
    ax.set(xlabel="supervised tokens seen", ylabel="rate", ylim=(0, 1),
           title=f"Learning curve on {curve['task_set']} ({curve['tasks']})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
