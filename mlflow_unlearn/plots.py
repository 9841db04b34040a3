"""Figures for the MLflow UI, drawn with matplotlib's object API (no pyplot, no global backend
state): pure functions that return a `Figure`; the steps log them as PNG run artifacts under
`plots/` (`mlflow.log_figure`). Every axis says what it measures and in which unit."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

COLORS = {"original": "#9e9e9e", "unlearned": "#1f77b4", "reference": "#2ca02c"}


def c_proxy_histogram(c_proxy, cut_points: Sequence[float], names: Sequence[str], *, title: str) -> Figure:
    """The C-proxy of every train example (mean true-class probability over training epochs, in
    [0, 1]) with the train-set tier cut points: left of the first cut is the most memorised tier."""
    c = np.asarray(c_proxy, dtype=np.float64)
    fig = Figure(figsize=(7.5, 4.0), dpi=110)
    ax = fig.add_subplot()
    counts, _, _ = ax.hist(c, bins=50, range=(0.0, 1.0), color="#4c72b0", edgecolor="white", linewidth=0.4)
    ax.set_yscale("log")
    ax.set_ylim(0.7, max(counts.max(), 1) * 6)  # headroom above the bars for the tier names
    for cut in cut_points:
        ax.axvline(cut, color="#c44e52", linestyle="--", linewidth=1.2)
    edges = [0.0, *sorted(cut_points), 1.0]
    for name, lo, hi in zip(reversed(list(names)), edges[:-1], edges[1:]):  # low C-proxy = high memorisation
        ax.text((lo + hi) / 2, 0.97, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=9, color="#c44e52", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xlabel("C-proxy: mean true-class probability during training (0-1)")
    ax.set_ylabel("train examples (log scale)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def tier_accuracy_chart(per_tier: Mapping[str, Mapping[str, float]], *, title: str) -> Figure:
    """Forget-set accuracy per memorisation tier for each model (`original`, `unlearned`,
    `reference`): the unlearned bar should sit at the reference's height, not at zero."""
    tiers = list(per_tier)
    models = [m for m in COLORS if any(m in per_tier[t] for t in tiers)]
    fig = Figure(figsize=(7.0, 3.8), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(tiers))
    for i, m in enumerate(models):
        vals = [per_tier[t].get(m, np.nan) for t in tiers]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m, color=COLORS[m])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{t}" for t in tiers])
    ax.set_ylim(0, 1.25)  # headroom for the value labels and the legend
    ax.set_xlabel("memorisation tier of the forget set (by C-proxy)")
    ax.set_ylabel("forget-set accuracy (fraction)")
    ax.legend(fontsize=8, ncol=len(models), loc="upper center", frameon=False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def method_comparison(rows: Sequence[Mapping], floor: Mapping[str, float] | None, *, title: str,
                      budget: float | None = None) -> Figure:
    """ToW (higher is better, 1 = retrain) and MIA gap (lower is better, 0 = retrain) per method,
    mean (a labelled dot) with the 95% interval over unlearning seeds (a bar; the caller cuts it to
    the metric's range), the retrain-vs-retrain noise floor dashed. `rows`: dicts with `name` and
    `tow`, `mia/gap` as (mean, low, high), and optionally `cost` (cost/train_fraction, the same form):
    then a third panel shows it, `budget` dashed. Each axis is zoomed to the data (ToW 0.87-0.98 on
    an axis from 0 looked alike), within the metric's range."""
    names = [r["name"] for r in rows]
    panels = [("tow", "ToW (1 = as retrain; higher is better)", "floor/tow", (0.0, 1.0)),
              ("mia/gap", "MIA gap (0 = as retrain; lower is better)", "floor/mia_gap", (0.0, 1.0))]
    if all("cost" in r for r in rows):
        panels.append(("cost", "cost (trainings: example passes / the original's)", "budget", (0.0, np.inf)))
        floor = {**(floor or {}), **({"budget": budget} if budget is not None else {})}
    fig = Figure(figsize=(4.6 * len(panels) + 1.6, 0.42 * len(rows) + 1.9), dpi=110)
    y = np.arange(len(rows))[::-1]
    for k, (key, label, floor_key, (low_bound, high_bound)) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        mean = np.array([r[key][0] for r in rows], dtype=np.float64)
        lo = np.array([r[key][1] for r in rows], dtype=np.float64)
        hi = np.array([r[key][2] for r in rows], dtype=np.float64)
        lo, hi = np.where(np.isfinite(lo), lo, mean), np.where(np.isfinite(hi), hi, mean)
        colors = ["#1f77b4" if n.startswith("RUM") else "#7f7f7f" for n in names]
        ax.hlines(y, lo, hi, colors=colors, linewidth=2.2, alpha=0.6)
        ax.scatter(mean, y, c=colors, s=28, zorder=3)
        reference = floor.get(floor_key) if floor else None
        shown = [v for v in (*lo, *hi, *([reference] if reference is not None else [])) if np.isfinite(v)]
        if shown:
            left, right = min(shown), max(shown)
            pad = max(0.08 * (right - left), 0.01)
            left, right = max(left - pad, low_bound), min(right + 3.5 * pad, high_bound)  # room for the labels
            ax.set_xlim(left, right)
        for yi, m in zip(y, mean):
            if np.isfinite(m):
                ax.annotate(f"{m:.3f}", (m, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        if reference is not None and np.isfinite(reference):
            ax.axvline(reference, color="#2ca02c", linestyle="--", linewidth=1.2,
                       label="budget" if key == "cost" else "retrain vs retrain")
            ax.legend(fontsize=8, loc="lower left" if key == "tow" else "lower right")
        ax.set_yticks(y, names if k == 0 else [""] * len(names), fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlabel(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower cost, higher score; ties on
    both count as one), ordered by cost: what more compute buys."""
    c, s = np.asarray(costs, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = sorted((i for i in range(len(c)) if np.isfinite(c[i]) and np.isfinite(s[i])), key=lambda i: (c[i], -s[i]))
    front, best = [], -np.inf
    for i in order:
        if s[i] > best:
            front.append(i)
            best = s[i]
    return front


def cost_quality(costs: Sequence[float], scores: Sequence[float], labels: Sequence[str], *, budget: float | None,
                 score_name: str, title: str) -> Figure:
    """Every scored plan as (cost in trainings, score), the Pareto front joined and labelled, and the
    budget dashed: the search's trade-off between what a plan costs and what it achieves."""
    c, s = np.asarray(costs, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    front = pareto_front(c, s)
    fig = Figure(figsize=(8.5, 4.8), dpi=110)
    ax = fig.add_subplot()
    ax.scatter(c, s, s=18, color="#9e9e9e", alpha=0.8, label="scored plans")
    if front:
        ax.plot(c[front], s[front], "-o", color="#1f77b4", markersize=5, label="Pareto front")
        for i in front:
            ax.annotate(labels[i][:40], (c[i], s[i]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if budget is not None:
        ax.axvline(budget, color="#c44e52", linestyle="--", linewidth=1.2, label=f"budget {budget:g}")
    ax.set_xlabel("cost (trainings: example passes / the original's)")
    ax.set_ylabel(score_name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
