"""Figures and views for the notebooks; they read run outputs and return objects to show."""
from __future__ import annotations

import html

import matplotlib.pyplot as plt
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
    ax.set_xlabel("tokens per trajectory (before trimming)")
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
