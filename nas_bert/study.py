"""Study files (studies/*.yaml): one pydantic model per stage, validated with one-line errors."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator

from nas_bert.errors import NasBertError
from nas_bert.evaluation_config import EvalConfig, StrictModel
from nas_bert.search_config import SearchConfig
from nas_bert.shipped import shipped_file, shipped_names
from nas_bert.space import SearchSpace, TeacherShape, load_space
from nas_bert.store import atomic_write_text, parse_mapping, read_mapping, validate

_Strict = StrictModel


class CorpusConfig(_Strict):
    """Where the text comes from and how it becomes MLM training sequences."""

    name: str = "wordnet"  # "wordnet", a local .txt/.json/.jsonl/.csv[.gz|.xz|...], or a Hub id
    subset: str | None = None  # Hub dataset configuration
    text_column: str | None = None  # None -> "gloss" for wordnet, "text" otherwise
    max_seq_length: int = Field(128, ge=8)
    pack: bool = True
    validation_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    mlm_probability: float | None = Field(None, ge=0.0, lt=1.0, description="share of tokens masked, only where a loss "
                                          "uses the teacher's MLM logits; None: 0.15 when one does, else clean text")
    seed: int = 0

    @property
    def resolved_text_column(self) -> str:
        """The text column actually used."""
        return self.text_column or ("gloss" if self.name == "wordnet" else "text")


# the export's measured variant that each runtime's budget judges (nas_bert.json's "measured_ms"), and its name
RUNTIME_VARIANT = {"torch": "torch_fp32", "onnxruntime": "onnx_fp32", "onnxruntime-int8": "onnx_int8"}
RUNTIME_LABEL = {"torch": "PyTorch fp32", "onnxruntime": "ONNX Runtime fp32", "onnxruntime-int8": "ONNX Runtime int8"}


class LatencyConfig(_Strict):
    """How latency is measured; device, threads, batch and sequence length enter the fingerprint."""

    device: Literal["cpu", "cuda"] = "cpu"
    runtime: Literal["torch", "onnxruntime", "onnxruntime-int8"] = Field(
        default="torch", description="the runtime the budgets are for: PyTorch fp32, ONNX Runtime fp32, or ONNX "
        "Runtime with dynamic int8 weights (as `nas-bert export` writes onnx/model.int8.onnx); every timing of the "
        "latency model, the finalists and the export runs on it")
    threads: int = Field(default=2, ge=1, description="intra-op threads while timing")
    batch_size: int = Field(default=1, ge=1)
    seq_len: int = Field(default=128, ge=1)
    min_run_time: float = Field(default=0.2, gt=0, description="seconds per blocked_autorange round")
    calibration_archs: int = Field(default=20, ge=3, description="students measured end to end to fit the "
                                   "calibration (half random, half spread over the latency range)")
    calibration_one_width: int = Field(default=12, ge=0, description="more calibration students of one width: "
                                       "the teacher's first layers, sliced or pruned, spread over the latency "
                                       "range of each width (the hand-designed students a search seeds and compares with)")
    seed: int = 0
    fresh_process: bool = Field(default=True, description="time the latency table, its calibration and the finalists' "
                                "and the export's runs in a new process: one long `nas-bert run` process timed the "
                                "calibration students 5-12% slower than the students beside them (BENCHMARKS.md)")
    finalist_runs: int = Field(default=1, ge=1, description="timing runs of a budget's finalists, each student "
                               "judged by its slowest (its median kept as measured_ms): of students that pass one run "
                               "the best tends to be one that drew low, and one whose median holds by less than its "
                               "runs' spread is over as often as not when the export times it again")

    @model_validator(mode="after")
    def _runtime_on_cpu(self) -> LatencyConfig:
        if self.runtime != "torch" and self.device != "cpu":
            raise ValueError(f"latency.runtime {self.runtime} times ONNX Runtime's CPU provider; set latency.device: "
                             "cpu, or runtime: torch to time on cuda")
        return self


class TrainConfig(_Strict):
    """One training loop serves supernet training and distillation; they differ in the loss."""

    steps: int = Field(default=200, ge=1, description="optimizer updates")
    batch_size: int = Field(default=16, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per update")
    lr: float = Field(default=5e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=20, ge=0)
    schedule: Literal["linear", "cosine", "constant_with_warmup"] = "linear"
    max_grad_norm: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=50, ge=1, description="validation every N updates (and at the end)")
    val_batches: int = Field(default=4, ge=1, description="fixed validation batches")
    checkpoint_every: int = Field(default=50, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    seed: int = 0

    # settings that change what is validated or kept, never the weights: a new value continues the run
    NOT_WEIGHTS: ClassVar[tuple[str, ...]] = ("steps", "eval_every", "checkpoint_every", "keep_checkpoints")

    def weight_settings(self) -> dict[str, Any]:
        """The settings that shape the weights (all but `NOT_WEIGHTS`), as JSON: part of a run's key."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.NOT_WEIGHTS}


class SupernetConfig(TrainConfig):
    steps: int = Field(default=200, ge=0, description="optimizer updates; 0: the supernet is the teacher's weights, "
                                                      "importance-ordered, as they are")

    # the supernet's latest weights are the ones used, whatever it validates on, so its validation settings
    # stay out of its key too (a distilled student keeps its best-validated weights: its key keeps val_batches)
    NOT_WEIGHTS: ClassVar[tuple[str, ...]] = (*TrainConfig.NOT_WEIGHTS, "val_batches", "val_random_archs")

    sampling: Literal["uniform", "sandwich"] = Field(default="uniform", description="uniform: one random "
                                                     "sub-architecture per block per step; sandwich: also the extremes")
    sandwich_every: int = Field(default=1, ge=1, description="with sandwich: train the extremes every k-th step")
    val_random_archs: int = Field(default=2, ge=0, description="random sub-architectures scored at each validation")
    init: Literal["teacher", "random"] = Field(
        default="teacher",
        description="teacher: attention/feed-forward weights start from the teacher's layers (full width = the teacher); "
                    "random: from scratch",
    )
    init_units: Literal["importance", "leading"] = Field(default="importance", description="with init teacher: "
                                                          "narrower widths keep the most important units, or the leading ones")
    init_batches: int = Field(default=8, ge=1, description="corpus batches that rank the teacher's units by importance "
                                                         "and fit the boundary predictions")
    keep_teacher_layers: bool = Field(
        default=True,
        description="with init teacher: the teacher's full-width attention and feed-forward stay as they are (frozen) "
                    "while the shared weights train, so the teacher's own layers are never made worse",
    )


class LossWeights(_Strict):
    """Weights of the distillation losses (see nas_bert.distill.objective). The primary loss is the teacher's use:
    pooled (+ similarity) for a sentence-transformers teacher, logits for a masked LM, final otherwise;
    a term that does not apply to the teacher is off whatever its weight."""

    pooled: float = Field(default=1.0, ge=0, description="1 - cosine of the sentence embeddings")
    similarity: float = Field(default=10.0, ge=0, description="MSE of the in-batch sentence similarity matrices")
    hidden: float = Field(default=1.0, ge=0)
    embeddings: float = Field(default=0.1, ge=0)
    attention: float = Field(default=1.0, ge=0)
    final: float = Field(default=1.0, ge=0)
    logits: float = Field(default=1.0, ge=0, description="used only when the teacher has an MLM head")


class DistillConfig(TrainConfig):
    """Stage 7: task-agnostic distillation of an extracted student (same loop as the supernet)."""

    steps: int = Field(default=300, ge=1)
    lr: float = Field(default=2e-4, gt=0)
    warmup_steps: int = Field(default=30, ge=0)
    eval_every: int = Field(default=100, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    weights: LossWeights = LossWeights()
    relation_heads: int = Field(default=4, ge=1, description="MiniLMv2 relation heads (independent of student heads)")
    temperature: float = Field(default=2.0, gt=0)
    freeze_embeddings: bool = Field(default=False, description="keep the teacher's embedding tables fixed")
    teacher_cache_mb: int = Field(default=1024, ge=0, exclude=True, description="memory for the teacher's outputs on "
                                  "the batches many short runs share (finalists, mapping search); 0: none. Speed only")


class MappingConfig(_Strict):
    """Stage 6: DEAP genetic search over layer mappings; fitness from a short proxy distillation."""

    population: int = Field(default=8, ge=2)
    generations: int = Field(default=4, ge=1)
    crossover_prob: float = Field(default=0.6, ge=0, le=1)
    mutation_prob: float = Field(default=0.4, ge=0, le=1)
    tournament_size: int = Field(default=3, ge=2)
    hall_of_fame: int = Field(default=3, ge=1)
    proxy_steps: int = Field(default=20, ge=1, description="distillation steps per fitness evaluation")
    proxy_batch_size: int = Field(default=8, ge=1)
    proxy_examples: int = Field(default=2000, ge=16, description="corpus sample the proxy trains on")
    proxy_val_batches: int = Field(default=2, ge=1)
    enumerate_below: int = Field(default=24, ge=0, description="enumerate every mapping when there are at most this many")
    confirm_seeds: int = Field(default=3, ge=0, description="the searched mapping is used only where, run again with "
                               "this many seeds beside the best heuristic mapping (each seed's two runs paired), it "
                               "beats it beyond the 95% interval (0 or 1: no check)")
    confirm_steps: int = Field(default=0, ge=0, description="distillation steps of each confirmation run (0: proxy_steps)")
    seed: int = 0


class StudyConfig(_Strict):
    name: str
    teacher: str = "minilm-l6"
    corpus: CorpusConfig = CorpusConfig()
    search_space: str = "auto"
    db_url: str | None = Field(default=None, description="default sqlite:///<study dir>/<name>.db")
    workdir: str | None = Field(default=None, description="checkpoints and exports; default <study dir>/<name>/")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    supernet: SupernetConfig = SupernetConfig()
    latency: LatencyConfig = LatencyConfig()
    search: SearchConfig = SearchConfig()
    mapping: MappingConfig = MappingConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvalConfig = EvalConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '-' and '.' only")
        return v

    @model_validator(mode="after")
    def _choose_by_tasks(self) -> StudyConfig:
        by = self.search.choose_by
        names = {t.name for t in self.evaluate.tasks}
        for k in [by] if isinstance(by, str) else list(by):
            kind, _, task = k.partition(":")
            if kind in ("task", "finetune") and task not in names | ({"wordnet"} if kind == "finetune" else set()):
                raise ValueError(f"search.choose_by {k!r}: no task {task!r} in evaluate.tasks "
                                 f"(tasks: {sorted(names) or 'none'}); add it there or choose by 'fidelity'")
        return self


@dataclass
class Study:
    """A loaded study file with its paths resolved (relative paths are relative to the file)."""

    cfg: StudyConfig
    file: Path
    workdir: Path
    db_url: str
    space: SearchSpace

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def export_dir(self) -> Path:
        """Where `nas-bert run` and the service's jobs export the students: <workdir>/export."""
        return self.workdir / "export"

    def device(self) -> torch.device:
        """cuda when asked for, or with `auto` when this machine has a GPU per process (torchrun's LOCAL_WORLD_SIZE)."""
        procs, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
        if self.cfg.device == "cuda" and procs > gpus:
            raise NasBertError(f"study asks for device 'cuda' in {procs} process(es) on a machine with {gpus} visible "
                               f"GPU(s): start at most one process per GPU, or set device: auto or cpu")
        return torch.device("cuda" if self.cfg.device == "cuda" or (self.cfg.device == "auto" and procs <= gpus) else "cpu")

    def snapshot(self) -> dict[str, Any]:
        """What the database records of this study: the validated config and the resolved space."""
        return {"config": self.cfg.model_dump(mode="json"), "space": self.space.model_dump(mode="json")}


FILE_SUFFIXES = (".txt", ".text", ".json", ".jsonl", ".csv", ".gz", ".xz", ".bz2", ".zst", ".lz4")


def local_path(value: str, base: Path) -> str:
    """A path the study file gives (`teacher`, `corpus.name`) read from the file's folder, made absolute; a
    name that is no local path (an alias, a Hub id such as org/model) unchanged. What can only be a local
    path (./x, ../x, /x, ~/x, a file name, a/b where a is a folder there) stays a path even when missing, so
    its loader says it is missing instead of asking the Hub for it."""
    p = Path(value).expanduser()
    target = p if p.is_absolute() else base / p
    first = Path(value).parts[0] if Path(value).parts else ""
    local = (target.exists() or value.startswith((".", "/", "~")) or value.count("/") > 1
             or value.lower().endswith(FILE_SUFFIXES) or ("/" in value and (base / first).is_dir()))
    return str(target.resolve()) if local else value


def teacher_shape(teacher: str) -> TeacherShape:
    """The teacher's layers, width, heads and neurons (its config.json only), for a space made from it."""
    from nas_bert.teacher import load_teacher_config

    return TeacherShape.of(load_teacher_config(teacher))


def study_file(path: str | Path) -> tuple[Path, Path]:
    """A study file and the folder its relative paths (database, work folder, local teacher or corpus) are
    read against: the file's own; for a shipped study named bare (`--config demo`, no such file here) the
    current directory, so that an installed package never writes inside itself."""
    file = Path(path)
    if file.is_file():
        return file, file.resolve().parent
    shipped = shipped_file("studies", str(path))
    if shipped is not None:
        return shipped, Path.cwd()
    raise NasBertError(f"study file {file} not found; pass --config studies/<name>.yaml, a shipped study "
                       f"({', '.join(shipped_names('studies'))}), or write one with `nas-bert init NAME`")


def load_study(path: str | Path, db_url: str | None = None, overrides: dict[str, Any] | None = None) -> Study:
    """Read and validate a study file; `db_url` and `overrides` (dotted keys) win over the file."""
    file, base = study_file(path)
    if db_url is not None and not db_url.strip():  # an empty --db is an error, not "the study file's database"
        raise NasBertError("--db is empty; give a database URL (sqlite:///path.db) or leave --db out")
    data = read_mapping(file, f"study file {file}")
    data.setdefault("name", file.stem)
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = validate(StudyConfig, data, f"study file {file}")
    cfg.teacher = local_path(cfg.teacher, base)
    if cfg.corpus.name != "wordnet":
        cfg.corpus.name = local_path(cfg.corpus.name, base)
    for item in [*cfg.evaluate.tasks, *cfg.evaluate.pairs, *cfg.evaluate.ood]:  # the study's data files
        item.data = local_path(item.data, base)
        if getattr(item, "test", None):
            item.test = local_path(item.test, base)  # type: ignore[union-attr]
    workdir = Path(cfg.workdir) if cfg.workdir else Path(cfg.name)
    workdir = workdir if workdir.is_absolute() else base / workdir
    url = db_url or cfg.db_url or f"sqlite:///{base / (cfg.name + '.db')}"
    if not db_url and url.startswith("sqlite:///") and not Path(url[10:]).is_absolute():
        url = f"sqlite:///{base / url[10:]}"  # in a study file, a relative SQLite path is relative to the file
    space = load_space(cfg.search_space, base, teacher=lambda: teacher_shape(cfg.teacher))
    return Study(cfg=cfg, file=file.resolve(), workdir=workdir, db_url=url, space=space)


def init_study(name: str, teacher: str | None = None, corpus: str | None = None, template: str = "demo",
               folder: Path | None = None, force: bool = False, budgets_ms: list[float] | None = None,
               budgets_x: list[float] | None = None) -> Path:
    """Write NAME.yaml in `folder` (default: the current one) from the shipped study `template`, its comments
    kept, with its name and, where given, its teacher, corpus and latency budgets replaced; written whole or
    not at all."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith((".yaml", ".yml")):
        raise NasBertError(f"study name {name!r}: use letters, digits, '-', '_' or '.' (the file is NAME.yaml), "
                           "e.g. `nas-bert init my-study`")
    source = shipped_file("studies", template)
    if source is None:
        raise NasBertError(f"no shipped study {template!r} to start from; use one of {shipped_names('studies')}")
    target = (folder or Path.cwd()) / f"{name}.yaml"
    if target.exists() and not force:
        raise NasBertError(f"{target} exists; choose another name, or pass --force to overwrite it")
    text = source.read_text()

    def put(pattern: str, value: str, what: str) -> None:
        nonlocal text
        text, n = re.subn(pattern, lambda m: m.group(1) + json.dumps(value) + m.group(3), text, count=1, flags=re.MULTILINE)
        if n != 1:
            raise NasBertError(f"shipped study {template!r} has no {what} line to set; edit {target} by hand")

    put(r"^(name:\s*)(\S+)(.*)$", name, "name")
    if teacher is not None:
        put(r"^(teacher:\s*)(\S+)(.*)$", teacher, "teacher")
    if corpus is not None:
        put(r"^(corpus:\s*\n\s+name:\s*)(\S+)(.*)$", corpus, "corpus name")
    if budgets_ms or budgets_x:  # the budgets given replace the template's: in ms, as fractions, or both
        lines = ([f"budgets_ms: {json.dumps([float(b) for b in budgets_ms])}   # ms on the latency device"]
                 if budgets_ms else []) + (
            [f"budgets_x: {json.dumps([float(x) for x in budgets_x])}   # fractions of the teacher's latency there"]
            if budgets_x else [])
        # the template's budgets line (ms or fractions) and its comment give way to the budgets given
        text, n = re.subn(r"^(\s+)budgets_(?:ms|x):\s*\[[^\]]*\][^\n]*", lambda m: "\n".join(m.group(1) + ln for ln in lines)
                          .lstrip("\n"), text, count=1, flags=re.MULTILINE)
        if n == 0:  # a study without budgets (the tiny one): a search section of its own, or lines in it
            text, n = re.subn(r"^search:[ \t]*$", "search:" + "".join(f"\n  {ln}" for ln in lines), text, count=1,
                              flags=re.MULTILINE)
        if n == 0:
            text = text.rstrip("\n") + "\nsearch:" + "".join(f"\n  {ln}" for ln in lines) + "\n"
    validate(StudyConfig, parse_mapping(text, f"study file {target}"), f"study file {target}")
    atomic_write_text(target, text)
    return target
