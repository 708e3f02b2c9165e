"""Pictures people would rather look at: Pareto fronts and loss curves (written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt
import optuna
from optuna.trial import TrialState

from nas_bert.store import atomic_file
from nas_bert.study import Study


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write to a temporary name and rename, so a kill never leaves half a PNG."""
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_fronts(study: Study, budgets: list[float], path: Path) -> Path:
    """The search's proxy loss vs predicted latency: every trial, the feasible front, the budget line."""
    from nas_bert.search import PROXY_LABELS, optuna_study_name, proxy_of, storage_for

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    storage = storage_for(study)
    for i, budget in enumerate(budgets):
        colour = colours[i % len(colours)]
        st = optuna.load_study(study_name=optuna_study_name(study, budget), storage=storage)
        done = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=8, alpha=0.25, color=colour)
        front = sorted((t for t in st.best_trials if t.values[1] <= budget), key=lambda t: t.values[1])
        ax.plot([t.values[1] for t in front], [t.values[0] for t in front], "o-", color=colour,
                label=f"front, budget {budget:g} ms ({len(front)})")
        ax.axvline(budget, color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel(PROXY_LABELS[proxy_of(study)][0])
    ax.set_title(f"study '{study.name}': feasible Pareto fronts")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
