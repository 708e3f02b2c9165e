"""The `search:` section of a study file (stages 3-5: the block scores, the Optuna search, the rescoring, the
screen and the finalists), validated with one-line errors like every section."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nas_bert.evaluation_config import ChooseProtocol, StrictModel

_Strict = StrictModel


class SearchConfig(_Strict):
    """Stages 3-5: NAS-BERT's block scores, Optuna over the space, rescoring of the best, the finalists."""

    trials: int = Field(default=200, ge=1, description="complete trials per budget, across all workers")
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    population_size: int = Field(default=24, ge=2, description="NSGA-II population")
    seed: int = Field(default=0, ge=0, description="Optuna's samplers take seeds 0 .. 2**32 - 1")
    batch_size: int = Field(default=16, ge=1)
    score_batches: int = Field(default=2, ge=1, description="validation batches per block score")
    rescore_top: int = Field(default=8, ge=1, description="T: best feasible candidates rescored end to end")
    rescore_batches: int = Field(default=8, ge=1, description="validation batches for rescoring")
    reserve_shrinks: int = Field(default=3, ge=0, description="per top searched student, points each one step "
                                 "smaller (0.5, 1.5, 3.5 x the model's error below): the largest that holds if over")
    reserve_grows: int = Field(default=2, ge=0, description="and larger: the largest held with the error to spare")
    heartbeat_interval: int = Field(default=5, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(default=20, ge=2, description="seconds without a heartbeat before a trial is stale")
    max_retry: int = Field(default=1, ge=0, description="retries of a trial whose worker died")
    budgets_ms: list[float] = Field(default_factory=list, description="budgets `nas-bert run` searches")
    budgets_x: list[float] = Field(default_factory=list, description="budgets as fractions of the teacher's latency "
                                   "on the latency device (0.25: a quarter), timed when the latency model is fitted "
                                   "(the space's largest student: the teacher itself in a space made from it)")
    proxy: Literal["auto", "blocks", "fidelity", "readout", "gain"] = Field(
        default="auto", description="what a trial is scored by: blocks (NAS-BERT's sum of block losses against the "
        "teacher's states), fidelity (the extracted student's zero-step fidelity of its pooled output to the teacher's "
        "on validation text, 1 - fidelity minimised), readout (the same after a linear map of its vectors into the "
        "teacher's, ridge-fitted on the other half of the texts), gain (what that readout adds over the embeddings' "
        "own: bench_proxy.py's best ranker); auto: gain in a space made from the teacher (fidelity under 64 texts)")
    local_moves: bool = Field(default=False, description="in a space made from the teacher, once the queued points "
                              "are done, the best feasible point by the proxy has every point one step from it that "
                              "fits queued (a layer's heads or neurons one size up or down, a layer dropped or "
                              "grown, the width one size up or down), until no step improves it; then the sampler")
    shrink_every: int = Field(default=0, ge=0, description="progressive shrinking: every this many complete trials, "
                              "options (a width, a layer's heads or neurons, dropping a layer) that shrink_min_uses "
                              "feasible trials tried and none reached the front are no longer drawn; 0: off")
    shrink_min_uses: int = Field(default=4, ge=1, description="trials an option needs before it may be dropped")
    finalist_steps: int = Field(default=40, ge=1, description="distillation steps every finalist gets in the first "
                                                              "round of the choice")
    finalist_rounds: int = Field(default=1, ge=1, description="successive halving: each round keeps the better half "
                                 "of the finalists and trains them on to twice the steps in all")
    grow_recipes: bool = Field(default=False, description="each family's slowest member the latency model predicts "
                               "within the budget grown as the top searched students are (reserve_grows levels, "
                               "timed with the finalists): one that holds with the model's error to spare is a "
                               "searched finalist beside its recipe, which the search can then beat with the recipe's "
                               "own weights and the latency it leaves unused; one judged at the budget's edge "
                               "(within the model's error of it) is shrunk alike, and the largest of its smaller "
                               "points that holds with the error to spare is a searched finalist beside it")
    screen_steps: int = Field(default=0, ge=0, description="a screen before the finalists' first round: the search's "
                              "best screen_pool students by its proxy (and those by rescored loss) are each distilled "
                              "this many steps on other batches than the rounds', and the best rescore_top of them by "
                              "held-out fidelity are the top searched finalists (the next as many in reserve); every "
                              "finalist is screened so the summary ranks the screen against the first round "
                              "(bench_proxy.py --few-steps: 20 steps ranked at tau 0.71-1.00 where the zero-step "
                              "gain ranked at 0.67); 0: the search's proxy alone picks them")
    screen_pool: int = Field(default=12, ge=1, description="searched students the screen distils (by the search's "
                             "proxy, after the hand-designed points)")
    finalist_baselines: bool = Field(default=True, description="the teacher's first layers and the uniformly narrowed "
                                                               "teacher of the budget are finalists too")
    finalist_width_step: int = Field(default=2, ge=1, description="the uniformly narrowed teachers timed: every this "
                                                                  "many attention heads of width")
    choose_by: str | dict[str, float] = Field(default="fidelity", description="what ranks the finalists: fidelity, "
                                              "task:NAME (a linear probe's accuracy on an evaluate.tasks task, on "
                                              "frozen sentence vectors), finetune:NAME (the accuracy on the task's "
                                              "validation split after the evaluation's fine-tuning, in the rounds "
                                              "after the first; NAME a task of evaluate.tasks or wordnet) or a weighted mix, "
                                              "{fidelity: 1, finetune:wordnet: 1}")
    choose_protocol: ChooseProtocol = Field(default_factory=ChooseProtocol, description=ChooseProtocol.__doc__)

    @field_validator("choose_by")
    @classmethod
    def _criterion(cls, v: str | dict[str, float]) -> str | dict[str, float]:
        for k, w in ({v: 1.0} if isinstance(v, str) else v).items():
            if k != "fidelity" and not any(k.startswith(p) and len(k) > len(p) for p in ("task:", "finetune:")):
                raise ValueError(f"{k!r}: choose by 'fidelity', 'task:NAME' or 'finetune:NAME' (a task of "
                                 "evaluate.tasks; finetune:wordnet for the default task)")
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weight of {k!r}: a finite number >= 0")
        if isinstance(v, dict) and not any(v.values()):
            raise ValueError("give at least one criterion a weight > 0")
        return v

    @field_validator("budgets_ms")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        for b in v:  # NaN and infinity are refused before this (allow_inf_nan=False)
            if not (math.isfinite(b) and b > 0):
                raise ValueError(f"budget {b:g}: budget must be a finite number of ms > 0")
        return v

    @field_validator("budgets_x")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for x in v:
            if not (math.isfinite(x) and 0 < x <= 1):
                raise ValueError(f"budget {x:g}x: a fraction of the teacher's latency, > 0 and <= 1 (0.25: a quarter)")
        return v

    @model_validator(mode="after")
    def _readout_texts(self) -> SearchConfig:
        if self.proxy in ("readout", "gain") and (n := min(self.score_batches, self.rescore_batches) * self.batch_size) < 64:
            raise ValueError(f"proxy {self.proxy} fits a linear map on the scored texts, {n} here: give score_batches "
                             "(and rescore_batches) x batch_size >= 64")
        return self
