"""What `nas-bert run` returns: a row per budget's student (`RunRow`), the stages it ran or skipped, the run."""

from __future__ import annotations

from typing import Any, ClassVar

from nas_bert.choose import Margin, TruncatedReference
from nas_bert.record import Record


class StageRecord(Record):
    """A stage `nas-bert run` ran or skipped."""

    stage: str
    key: str  # the budget ("5ms"), the budgets of the export ("5,8"), or "" for the shared stages
    seconds: float  # this run's, or what it took when it finished earlier
    skipped: bool


class RunRow(Record):
    """One budget's student in `nas-bert run`'s table: where it comes from, its times (the finalists' and the
    export's), its evaluation and the untouched truncated teacher beside it."""

    absent_unless_given: ClassVar[frozenset[str]] = frozenset({"tasks", "pairs", "ood", "tied_with", "tie_at_edge"})

    budget_ms: float
    budget_x: float | None = None  # the fraction of the teacher's latency the budget was given as (None: in ms)
    trial: int | None  # None: a hand-designed student
    student: str
    origin: str
    architecture: str
    params: int
    predicted_ms: float | None  # the search's latency model
    predicted_now_ms: float | None  # the calibration refitted in the export's timing run
    finalist_ms: float  # measured in the finalists' timing run
    finalist_judged_ms: float  # the time the budget judged there
    over_budget: bool
    drift: float | None  # the export's run against the latency model's fit
    measured_ms: float | None  # the export's time on the runtime the budgets are for (`latency.runtime`)
    judged_ms: float | None
    onnx_int8_ms: float | None
    teacher_ms: float | None
    fidelity: float | None
    ood_fidelity: float | None
    accuracy: float | None
    teacher_accuracy: float | None
    accuracy_ratio: float | None
    label_loyalty: float | None
    probability_loyalty: float | None
    truncated: TruncatedReference | None
    folder: str | None  # its exported folder
    accuracy_ratio_low: float | None = None  # its paired bootstrap 90% interval over the test examples
    accuracy_ratio_high: float | None = None
    margin: Margin | None = None  # the finalists' choice against the best of the other kind (searched or hand-designed)
    rounds: list[list[int]] | None = None  # successive halving: [steps, finalists distilled that long] per round
    proxy: str = "fidelity"  # search.proxy, whose value at each finalist's start proxy_tau ranks by
    proxy_tau: float | None = None  # that zero-step proxy's Kendall tau against the first round's fidelity
    screen_steps: int | None = None  # search.screen_steps, the screen whose Kendall tau against the first round
    screen_tau: float | None = None  # is screen_tau (None: no screen)
    tied_with: dict[str, str] | None = None  # searched finalists passed over for this recipe on a tie (`tie_to_recipe`)
    tie_at_edge: dict[str, str] | None = None  # this searched one kept on a tie: the recipe at the budget's edge
    mapping: dict[str, Any] | None = None  # the layer mapping distilled with and why (`MappingSearch.confirm`)
    tasks: dict[str, dict[str, Any]] | None = None  # the study's own data by name (`EvaluationResult`)
    pairs: dict[str, dict[str, Any]] | None = None
    ood: dict[str, dict[str, Any]] | None = None


class RunResult(Record):
    """`nas-bert run`'s result: a row per budget's student and the stages run or skipped."""

    study: str
    out: str
    pareto_png: str
    students: list[RunRow]
    stages: list[StageRecord]
    seconds: float
    runtime: str = "torch"  # the runtime the budgets are for (`latency.runtime`): the table's ms are its
