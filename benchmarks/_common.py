"""Helpers shared by the benchmark scripts: the machine's name, a Markdown table, the tiny study's sizes."""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

from pydantic import RootModel

# studies/tiny.yaml at sizes that make every stage take seconds (the benchmarks that time the machinery
# around the stages, not the stages themselves)
_TINY_SIZES: dict[str, dict[str, Any]] = {
    "latency": {"seq_len": 32, "min_run_time": 0.005, "calibration_archs": 3},
    "search": {"trials": 24, "population_size": 6, "score_batches": 1, "rescore_batches": 1, "batch_size": 4,
               "rescore_top": 2, "finalist_steps": 2},
    "mapping": {"population": 4, "generations": 2, "proxy_steps": 2, "proxy_batch_size": 2, "proxy_examples": 32,
                "proxy_val_batches": 1, "enumerate_below": 0},
    "distill": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_every": 4, "checkpoint_every": 2,
                "val_batches": 2},
    "evaluate": {"finetune_steps": 3, "fidelity_texts": 16, "max_train_examples": 48, "max_eval_examples": 16,
                 "max_seq_length": 16, "batch_size": 8, "ood_texts": 16},
}


class Timings(RootModel[dict[str, float]]):
    """Every student's and the teacher's ms in one interleaved run, by name."""


def tiny_sizes(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A fresh copy of the tiny sizes, each section updated with `overrides[section]`."""
    sizes = copy.deepcopy(_TINY_SIZES)
    for section, values in overrides.items():
        sizes.setdefault(section, {}).update(values)
    return sizes


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def study_budgets(study: Any, db: Any, only: str = "") -> list[float]:
    """The study's budgets in ms as `nas-bert run` resolves them (its finished stages are these budgets' stages), or
    `only` of them (ms, comma-separated); exits with a one-line error naming a budget the study does not have."""
    from nas_bert.pipeline import fitted_teacher_ms, resolve_budgets

    budgets = list(resolve_budgets(study, fitted_teacher_ms(study, db) if study.cfg.search.budgets_x else None))
    if only:
        wanted = [float(b) for b in only.split(",") if b]
        if not set(wanted) <= set(budgets):
            raise SystemExit(f"--only {only}: not among the study's budgets {budgets}; pick from those")
        budgets = wanted
    return budgets


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) + " |"

    return "\n".join([fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)])


def accuracy_difference(mine: str | list[str] | None, theirs: str | list[str] | None, digits: int = 3) -> str:
    """Accuracy of `mine` minus `theirs` on the same test examples, with its paired 90% bootstrap interval over them
    (`difference_interval`). Each is an evaluation's `test_correct` ("0"/"1" per example) or a list of them, one per
    fine-tuning seed; "-" where either lacks them (evaluations recorded before they were kept) or they differ."""
    from nas_bert.evaluate import difference_interval

    a, b = ([m] if isinstance(m, str) else list(m or []) for m in (mine, theirs))
    if not a or not b or not all(a + b) or len({len(x) for x in a + b}) != 1:
        return "-"
    d, lo, hi = difference_interval([[int(c) for c in x] for x in a], [[int(c) for c in x] for x in b])
    return f"{d:+.{digits}f} ({lo:+.{digits}f}..{hi:+.{digits}f})"
