"""The figures themselves (core, no MLflow): what they draw, checked on the Figure objects."""
import numpy as np

from mlflow_unlearn import plots
from mlflow_unlearn.memorization import tier_cut_points, train_bins_from_c_proxy


def test_tier_cut_points_separate_the_train_bins():
    c = np.random.default_rng(0).beta(5, 1, 600)
    cuts = tier_cut_points(c)
    bins = train_bins_from_c_proxy(c)
    assert len(cuts) == 2 and cuts[0] < cuts[1]
    assert c[bins["high"]].max() <= cuts[0] <= c[bins["mid"]].min()
    assert c[bins["mid"]].max() <= cuts[1] <= c[bins["low"]].min()


def test_c_proxy_histogram_marks_the_cuts_and_names_the_units():
    c = np.random.default_rng(0).beta(5, 1, 600)
    fig = plots.c_proxy_histogram(c, [0.6, 0.9], ["low", "mid", "high"], title="t")
    ax = fig.axes[0]
    assert sorted(line.get_xdata()[0] for line in ax.get_lines()) == [0.6, 0.9]
    assert "0-1" in ax.get_xlabel() and [t.get_text() for t in ax.texts] == ["high", "mid", "low"]


def test_tier_chart_has_one_bar_per_model_and_tier():
    per_tier = {"low": {"original": 1.0, "unlearned": 0.9, "reference": 0.95},
                "high": {"original": 1.0, "unlearned": 0.1, "reference": 0.2}}
    ax = plots.tier_accuracy_chart(per_tier, title="t").axes[0]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.1, 0.2, 0.9, 0.95, 1.0, 1.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["original", "unlearned", "reference"]


def test_method_comparison_draws_intervals_and_the_floor():
    rows = [{"name": "RUM (searched plan)", "tow": (0.9, 0.85, 0.95), "mia/gap": (0.1, 0.05, 0.15)},
            {"name": "none (no unlearning)", "tow": (0.8, np.nan, np.nan), "mia/gap": (0.3, np.nan, np.nan)}]
    fig = plots.method_comparison(rows, {"floor/tow": 0.97, "floor/mia_gap": 0.02}, title="t")
    tow, gap = fig.axes
    assert sorted(tow.collections[1].get_offsets()[:, 0].tolist()) == [0.8, 0.9]  # the means, as dots
    assert [line.get_xdata()[0] for line in tow.get_lines() if line.get_linestyle() == "--"] == [0.97]
    assert "higher is better" in tow.get_xlabel() and "lower is better" in gap.get_xlabel()
    assert {t.get_text() for t in tow.texts} == {"0.900", "0.800"}  # every mean labelled
    left, right = tow.get_xlim()
    assert 0.7 < left < 0.8 and 0.97 < right <= 1.0  # zoomed to the data, inside ToW's range
    assert gap.get_xlim()[0] >= 0.0


def test_method_comparison_zooms_to_close_scores_within_the_range():
    """ToW 0.87-0.98 on an axis from 0 looked alike; an interval cut at 1 stays at 1."""
    rows = [{"name": f"m{i}", "tow": (v, v - 0.01, min(v + 0.03, 1.0)), "mia/gap": (0.05, 0.0, 0.1)}
            for i, v in enumerate((0.87, 0.93, 0.98))]
    tow, _ = plots.method_comparison(rows, {"floor/tow": 0.95, "floor/mia_gap": 0.02}, title="t").axes
    left, right = tow.get_xlim()
    assert 0.8 < left < 0.86 and right == 1.0


def test_method_comparison_shows_each_methods_cost_against_the_budget():
    rows = [{"name": "RUM (searched plan)", "tow": (0.9, 0.85, 0.95), "mia/gap": (0.1, 0.05, 0.15),
             "cost": (0.095, 0.09, 0.1)},
            {"name": "none (no unlearning)", "tow": (0.8, np.nan, np.nan), "mia/gap": (0.3, np.nan, np.nan),
             "cost": (0.0, np.nan, np.nan)}]
    fig = plots.method_comparison(rows, {"floor/tow": 0.97, "floor/mia_gap": 0.02}, title="t", budget=0.1)
    tow, gap, cost = fig.axes
    assert sorted(cost.collections[1].get_offsets()[:, 0].tolist()) == [0.0, 0.095]
    assert cost.get_xlim()[0] == 0.0 and cost.get_xlim()[1] > 0.1  # the budget line inside the panel
    assert [line.get_xdata()[0] for line in cost.get_lines() if line.get_linestyle() == "--"] == [0.1]
    assert "trainings" in cost.get_xlabel() and cost.get_legend().get_texts()[0].get_text() == "budget"


def test_the_pareto_front_keeps_what_more_compute_buys():
    costs = [0.0, 0.05, 0.05, 0.08, 0.1, 0.1, float("nan")]
    scores = [0.90, 0.93, 0.95, 0.94, 0.97, 0.96, 0.99]
    assert plots.pareto_front(costs, scores) == [0, 2, 4]  # 0.05/0.93, 0.08/0.94 and 0.1/0.96 are beaten; NaN left out
    fig = plots.cost_quality(costs, scores, [f"p{i}" for i in range(7)], budget=0.1, score_name="calibration ToW",
                             title="t")
    ax = fig.axes[0]
    front_line = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert list(front_line.get_xdata()) == [0.0, 0.05, 0.1]
    assert "trainings" in ax.get_xlabel()
