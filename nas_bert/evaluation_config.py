"""The `evaluate:` section of a study file: the evaluation protocol and the study's own data (downstream tasks,
sentence-pair similarity sets, out-of-domain texts), validated with one-line errors like every section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class StrictModel(BaseModel):
    # every number of a study is finite: `.nan` or `.inf` in YAML is an error, never a silent NaN setting
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_Strict = StrictModel


class TaskData(_Strict):
    """A study's own downstream classification task: a local .csv/.json/.jsonl file or a Hub dataset id."""

    name: str = Field(min_length=1, description="how summaries, cards and index.json name it (task:NAME in choose_by)")
    data: str = Field(min_length=1, description="a local .csv/.json/.jsonl file (read against the study file's "
                                                "folder) or a Hub dataset id")
    text_column: str = "text"
    label_column: str = "label"
    test: str | None = Field(None, description="a separate test file (same columns); None: split off the data")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="the share held out for test (and again for "
                                                              "validation) when there is no test file or split")


class PairData(_Strict):
    """A sentence-pair similarity set: two text columns and a gold score, scored by the Spearman correlation of
    the cosine similarities of the sentence vectors with the gold scores."""

    name: str = Field(min_length=1)
    data: str = Field(min_length=1, description="a local .csv/.json/.jsonl file or a Hub dataset id")
    text1_column: str = "sentence1"
    text2_column: str = "sentence2"
    score_column: str = "score"
    split: str = Field("test", description="the split of a Hub dataset (a local file is one split)")
    max_pairs: int | None = Field(2000, ge=3)


class OodData(_Strict):
    """Out-of-domain texts, reported as the student's fidelity to the teacher on them (nothing trains on them)."""

    name: str = Field(min_length=1)
    data: str = Field(min_length=1, description="a .txt file (one text a line), a .csv/.json/.jsonl file or a Hub "
                                                "dataset id")
    text_column: str = "text"
    split: str = Field("test", description="the split of a Hub dataset (a local file is one split)")
    max_texts: int | None = Field(2000, ge=3)


# new keys of `evaluate`: at their defaults they leave the keys and fingerprints of earlier studies as they were
STUDY_DATA_KEYS = ("tasks", "pairs", "ood")


def _unique_names(v: list[Any], what: str) -> list[Any]:
    names = [x.name for x in v]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{what} named {dupes} more than once; give each a name of its own")
    return v


class EvalConfig(_Strict):
    """Evaluation protocol; the defaults run in minutes on a 2-core CPU with MiniLM-L6."""

    fidelity_texts: int = Field(512, ge=3, description="held-out test texts for fidelity")
    ood_texts: int = Field(2000, ge=0, description="out-of-domain sentences (the shipped manpages set) for a second "
                                                   "fidelity that nothing trains or chooses on; 0: skip")
    fidelity_max_seq_length: int = Field(128, ge=4, description="tokens per text for the fidelity figures")
    fidelity_centered: bool = Field(True, description="centre each model's sentence vectors before cosine similarity")
    max_seq_length: int = Field(48, ge=4)
    finetune_steps: int = Field(150, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0, description="encoder learning rate")
    head_lr: float = Field(2e-3, gt=0, description="classification head learning rate")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_train_examples: int | None = Field(6000, ge=1)
    max_eval_examples: int | None = Field(1500, ge=1)
    seed: int = 0
    tasks: list[TaskData] = Field(default_factory=list, description="the study's downstream tasks; none: WordNet "
                                  "supersenses. The first one gives the headline accuracy and fidelity")
    pairs: list[PairData] = Field(default_factory=list, description="sentence-pair similarity sets (Spearman)")
    ood: list[OodData] = Field(default_factory=list, description="out-of-domain text sets; none: the shipped man "
                               "pages (ood_texts of them)")

    @field_validator("tasks", "pairs", "ood")
    @classmethod
    def _names(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        return _unique_names(v, f"evaluate.{info.field_name}")


class ChooseProtocol(_Strict):
    """`search.choose_protocol`: the evaluation's protocol as the finalists' choice uses it (search.choose_by's
    linear probes and fine-tuning on the validation split), with the fields given here changed; none: the
    evaluation's own. Choosing on a shorter fine-tuning than the exported students are judged by saves hours; the
    choice's fine-tuning and its data enter the search's key, so changing only the evaluation redoes only the
    evaluation."""

    finetune_steps: int | None = Field(None, ge=1)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    # "evaluate": the last round of successive halving (the one whose figures choose) is measured as the exported
    # student is: distilled to distill.steps in all and fine-tuned as the evaluation does, the fields above applying
    # to the earlier rounds only (a shorter distillation and fine-tuning can rank two close finalists the other way
    # round from the evaluation the exported student gets)
    last_round: Literal["evaluate"] | None = None
    # the last round's finalists distilled and fine-tuned this many times (other batches, another fine-tuning seed:
    # the seeds of a training run) and ranked on the mean, with an interval of the two best's difference that holds
    # the seeds' spread beside the texts' sampling; 1: one run, the interval the texts' alone
    last_round_seeds: int = Field(1, ge=1, le=8)
    # the rounds before it that score fine-tuning run this many times alike, and their cut keeps, beside the better
    # half, every finalist whose mean lies within the interval (runs and texts) of the one at the cut: a short
    # fine-tuning's seed moves a finalist's accuracy by about a point, enough to drop one the last round would choose
    round_seeds: int = Field(1, ge=1, le=8)
    # "recipe": a searched finalist ranked first that does not beat the best hand-designed finalist beyond noise on
    # search.choose_by's score (the last round's runs and texts; one run: by the fidelity alone) is passed over for
    # it; "score": the ranking's first, however close
    ties: Literal["recipe", "score"] = "recipe"

    def applied_to(self, evaluate: EvalConfig, last: bool = False) -> EvalConfig:
        """`evaluate` with this protocol's fields in place of its own (`last`: for the last round, the evaluation's
        own where `last_round` says so)."""
        if last and self.last_round == "evaluate":
            return evaluate
        seeds = {"last_round", "last_round_seeds", "round_seeds", "ties"}  # the choice's, not the evaluation's
        return evaluate.model_copy(update=self.model_dump(exclude_none=True, exclude=seeds))
