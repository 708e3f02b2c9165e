"""Stage 8: how good is a student? Fidelity to the teacher and fine-tuned accuracy on a task.

Two views, both against the teacher:
- fidelity (no training): do the student's sentence vectors arrange held-out texts the way the
  teacher's do? Spearman correlation of all pairwise cosine similarities, so widths may differ;
- downstream: student and teacher are fine-tuned with the same protocol and seed on one task
  (WordNet supersenses by default); we report accuracy, its ratio to the teacher's, and loyalty
  (how often and how closely the student's predictions match the teacher's).

The teacher is fine-tuned once per (study, task, protocol) and memoised in the database.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict
from sqlalchemy import select
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, get_scheduler

from nas_bert.data import LOAD_ERRORS, first_line, load_manpages, load_task
from nas_bert.data.tasks import data_identity, load_ood
from nas_bert.errors import NasBertError
from nas_bert.evaluate.metrics import fidelity, fidelity_bootstrap, loyalty, mean_pool, ratio_interval
from nas_bert.evaluate.study_data import study_data_agreement
from nas_bert.evaluate.vectors import batch as _batch
from nas_bert.evaluate.vectors import sentence_vectors, teacher_vectors
from nas_bert.evaluation_config import STUDY_DATA_KEYS, EvalConfig, TaskData
from nas_bert.record import Record
from nas_bert.store import Database, EvaluationRow, atomic_write_text, file_sha256, folder_identity, json_hash

Task = str | TaskData  # "wordnet", a file or Hub id given on the command line, or one of the study's evaluate.tasks
from nas_bert.teacher import load_teacher


def task_name(task: Task) -> str:
    """How the database, the summary and the cards name a task."""
    return task if isinstance(task, str) else task.name


def protocol_hash(cfg: EvalConfig, task: Task) -> str:
    """Short sha256 of the protocol and the task; a local task file also contributes its content."""
    config = cfg.model_dump(mode="json", exclude={"tasks"})  # the task at hand is keyed below, not the others
    for k in STUDY_DATA_KEYS[1:]:
        if not config[k]:  # none: the protocols of studies made before these keys stay as they were
            config.pop(k)
        else:
            config[k] = [{**d, "content": data_identity(d)} for d in config[k]]
    key: dict[str, Any] = {"config": config, "task": task if isinstance(task, str) else task.model_dump(mode="json")}
    if isinstance(task, TaskData):
        key["file_sha256"] = data_identity(task.model_dump())
    elif Path(task).is_file():  # an edited task file must not reuse a stale teacher baseline
        key["file_sha256"] = file_sha256(task)
    return json_hash(key)


# -- fine-tuning ----------------------------------------------------------------------------------
class Classifier(nn.Module):
    """Encoder -> mean pooling -> dropout -> linear head over the labels."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(encoder.config.hidden_size), num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(mean_pool(h, attention_mask)))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def _predict(model: Classifier, tokenizer: Any, texts: list[str], cfg: EvalConfig,
             device: torch.device | str) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(texts), cfg.batch_size):
        b = _batch(tokenizer, texts[i : i + cfg.batch_size], cfg.max_seq_length, device)
        out.append(torch.softmax(model(**b).double(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def finetune(encoder: nn.Module, tokenizer: Any, task: datasets.DatasetDict, label_names: list[str],
             cfg: EvalConfig, device: torch.device | str = "cpu",
             desc: str = "fine-tune") -> tuple[Classifier, float, np.ndarray]:
    """Fine-tune a copy of `encoder` with a new head; returns (classifier, test accuracy, test probs (n, classes))."""
    _seed_all(cfg.seed)  # head init and dropout draw from the global RNG
    model = Classifier(copy.deepcopy(encoder), len(label_names)).to(device)  # the caller's encoder stays as it was
    model.encoder.requires_grad_(True)  # teachers arrive frozen
    optimizer = torch.optim.AdamW([
        {"params": list(model.encoder.parameters()), "lr": cfg.lr},
        {"params": list(model.head.parameters()), "lr": cfg.head_lr},
    ])
    steps = cfg.finetune_steps
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * steps),
                              num_training_steps=steps)
    train = task["train"]
    texts, labels = list(train["text"]), torch.tensor(train["label"])
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    model.train()
    bar = tqdm(range(steps), desc=desc, leave=False)
    for _ in bar:
        if len(order) < cfg.batch_size:  # next epoch's shuffle, appended so every batch is full
            order += torch.randperm(len(texts), generator=gen).tolist()
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        b = _batch(tokenizer, [texts[i] for i in idx], cfg.max_seq_length, device)
        loss = F.cross_entropy(model(**b), labels[idx].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    test = task["test"]
    probs = _predict(model, tokenizer, list(test["text"]), cfg, device)
    accuracy = float((probs.argmax(1) == np.asarray(test["label"])).mean())
    return model, accuracy, probs


def validation_accuracy(encoder: nn.Module, tokenizer: Any, cfg: EvalConfig, task: Task,
                        device: torch.device | str = "cpu") -> float:
    """A task's accuracy on its validation split after the evaluation's fine-tuning (`finetune`: same steps, rates
    and seed): what `search.choose_by: finetune:NAME` ranks the finalists by. The test split stays the
    evaluation's, never chosen on."""
    return validation_scores(encoder, tokenizer, cfg, task, device)[0]


def validation_scores(encoder: nn.Module, tokenizer: Any, cfg: EvalConfig, task: Task,
                      device: torch.device | str = "cpu") -> tuple[float, str]:
    """`validation_accuracy` and which validation examples the fine-tuned encoder got right, as a string of 0/1 in
    the split's order: two students' strings pair up example by example (`difference_interval`)."""
    dd, names = load_task(task, cfg)
    held_out = datasets.DatasetDict(train=dd["train"], test=dd["validation"])
    _, acc, probs = finetune(encoder, tokenizer, held_out, names, cfg, device, desc=f"fine-tune ({task_name(task)})")
    right = probs.argmax(1) == np.asarray(held_out["test"]["label"])
    return acc, "".join("1" if x else "0" for x in right)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _teacher_run(teacher: Any, cfg: EvalConfig, task: Task, device: torch.device | str) -> dict[str, Any]:
    dd, names = load_task(task, cfg)
    _, acc, probs = finetune(teacher.encoder, teacher.tokenizer, dd, names, cfg, device, desc="fine-tune teacher")
    return {"task": task_name(task), "accuracy": acc, "test_probs": probs.tolist(), "params": _params(teacher.encoder),
            "teacher": str(getattr(teacher, "source", "")), "teacher_identity": _teacher_identity(teacher),
            "protocol_hash": protocol_hash(cfg, task)}


def _teacher_identity(teacher: Any) -> str:
    """The teacher's folder by content, wherever it lives (a study moved to another machine or virtualenv keeps
    its fine-tuned teacher); a Hub id as named."""
    source = str(getattr(teacher, "source", ""))
    return folder_identity(source) if source and Path(source).is_dir() else source


def _ood_default(cfg: EvalConfig) -> list[str]:
    """The out-of-domain texts of the headline figure: the study's first `evaluate.ood` set, else the shipped man
    pages (cfg.ood_texts of them; none when 0)."""
    if cfg.ood:
        return load_ood(cfg.ood[0])
    return load_manpages(cfg.ood_texts) if cfg.ood_texts else []


def agreement(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig, texts: list[str],
              device: torch.device | str = "cpu", ood: bool = True, resamples: int = 0) -> dict[str, Any]:
    """How the encoder's sentence vectors (the teacher's pooling) agree with the teacher's, without any
    training: fidelity and mean cosine on the task's held-out `texts`, and (with `ood`) ood_fidelity, ood_cosine on
    the out-of-domain texts (`_ood_default`). Cosines need the teacher's width (else None). With `resamples`, also
    each fidelity's `fidelity_bootstrap` ("fidelity_resamples", "ood_fidelity_resamples")."""
    out_of_domain = _ood_default(cfg) if ood else []
    sets = {"": texts, **({"ood_": out_of_domain} if out_of_domain else {})}
    encoder = encoder.to(device)
    out: dict[str, float | None] = {}
    for prefix, batch in sets.items():
        s_vec = sentence_vectors(encoder, tokenizer, batch, cfg.batch_size, cfg.fidelity_max_seq_length, device,
                                 teacher.pooling)
        t_vec = teacher_vectors(teacher, batch, cfg, device)
        out[f"{prefix}fidelity"] = fidelity(s_vec, t_vec, centered=cfg.fidelity_centered)
        if resamples:
            out[f"{prefix}fidelity_resamples"] = fidelity_bootstrap(s_vec, t_vec, cfg.fidelity_centered, resamples)
        out[f"{prefix}cosine"] = (float(F.cosine_similarity(s_vec, t_vec, dim=-1).mean())
                                  if s_vec.shape == t_vec.shape else None)
    return out


def fidelity_resamples(folder: str | Path, teacher: Any, cfg: EvalConfig, task: Task = "wordnet",
                       device: torch.device | str = "cpu", resamples: int = 200) -> dict[str, list[float]]:
    """A student folder's `fidelity_bootstrap` on the texts its evaluation's fidelities read (`agreement`'s):
    "fidelity" and "ood_fidelity". Every student's lists share the resamples, so two students' fidelities are
    compared resample by resample (`paired_interval`), which their figures alone are not."""
    folder = Path(folder)
    texts = list(load_task(task, cfg)[0]["test"]["text"][: cfg.fidelity_texts])
    out = agreement(load_student(folder).eval(), _load_tokenizer(folder, teacher.tokenizer), teacher, cfg, texts,
                    device, resamples=resamples)
    return {k.removesuffix("_resamples"): v for k, v in out.items() if k.endswith("_resamples")}


def evaluate_encoder(encoder: nn.Module, tokenizer: Any, teacher: Any, cfg: EvalConfig, task: Task = "wordnet",
                     device: torch.device | str = "cpu", teacher_result: dict[str, Any] | None = None,
                     ood: bool = True) -> dict[str, Any]:
    """Fidelity to `teacher`, fine-tuned accuracy and loyalty to it; `encoder` is moved to `device`.

    The teacher is fine-tuned here with the same protocol unless `teacher_result` (from
    `teacher_baseline`: "accuracy" and "test_probs") is given. Without `ood` the out-of-domain figures are left
    out (a study's second and later tasks: they do not depend on the task).
    """

    dd, names = load_task(task, cfg)
    encoder.to(device)
    sentence = agreement(encoder, tokenizer, teacher, cfg, list(dd["test"]["text"][: cfg.fidelity_texts]), device,
                         ood=ood)
    _, acc, probs = finetune(encoder, tokenizer, dd, names, cfg, device, desc="fine-tune student")
    if teacher_result is None:
        teacher_result = _teacher_run(teacher, cfg, task, device)
    t_acc = float(teacher_result["accuracy"])
    t_probs, labels = np.asarray(teacher_result["test_probs"]), np.asarray(dd["test"]["label"])
    right = probs.argmax(1) == labels
    low, high = (ratio_interval(right, t_probs.argmax(1) == labels)
                 if t_probs.shape == probs.shape and t_acc > 0 else (math.nan, math.nan))
    low, high = (None, None) if math.isnan(low) else (low, high)  # None, not NaN, in JSON
    return {
        "task": task_name(task),
        **sentence,
        "accuracy": acc,
        "teacher_accuracy": t_acc,
        "accuracy_ratio": acc / t_acc if t_acc > 0 else None,  # None, not NaN: the metrics are stored as JSON
        # its paired bootstrap 90% interval over the test examples (not over fine-tuning seeds)
        "accuracy_ratio_low": low, "accuracy_ratio_high": high,
        **loyalty(probs, t_probs),
        # which test examples it got right, "0"/"1" each: two students' accuracies compared pairwise (bench_seeds.py)
        "test_correct": "".join("1" if c else "0" for c in right),
        "params": _params(encoder),
        "protocol_hash": protocol_hash(cfg, task),
    }


# -- database memo --------------------------------------------------------------------------------
def _find(s: Any, study_name: str, subject: str, task: str, ph: str) -> EvaluationRow | None:
    q = select(EvaluationRow).where(EvaluationRow.study == study_name, EvaluationRow.subject == subject,
                                    EvaluationRow.task == task, EvaluationRow.protocol_hash == ph)
    return s.scalars(q).first()


def record_evaluation(db: Database, study_name: str, subject: str, arch_hash: str | None, task: Task,
                      cfg: EvalConfig, metrics: dict[str, Any]) -> None:
    """Insert or replace the row of (study, subject, task, protocol)."""
    ph = protocol_hash(cfg, task)
    blob = json.dumps(metrics)
    with db.session() as s:
        row = _find(s, study_name, subject, task_name(task), ph)
        if row is None:
            s.add(EvaluationRow(study=study_name, subject=subject, arch_hash=arch_hash, task=task_name(task),
                                protocol_hash=ph, metrics_json=blob))
        else:
            row.arch_hash, row.metrics_json = arch_hash, blob


def stored_evaluation(db: Database, study_name: str, subject: str, task: Task, cfg: EvalConfig) -> dict[str, Any] | None:
    """The metrics recorded for a subject under this protocol, if it was evaluated before."""
    with db.session() as s:
        row = _find(s, study_name, subject, task_name(task), protocol_hash(cfg, task))
        return json.loads(row.metrics_json) if row is not None else None


def teacher_baseline(db: Database, study_name: str, teacher: Any, cfg: EvalConfig, task: Task = "wordnet",
                     device: torch.device | str = "cpu") -> dict[str, Any]:
    """The fine-tuned teacher's accuracy and test probabilities: computed once per protocol, then read back."""
    with db.session() as s:
        row = _find(s, study_name, "teacher", task_name(task), protocol_hash(cfg, task))
        stored = json.loads(row.metrics_json) if row is not None else None
    # A study whose teacher was changed keeps its name, so check the stored teacher too: by content (rows of an
    # older nas-bert: by the folder's path)
    if stored is not None and (stored.get("teacher_identity") == _teacher_identity(teacher) if "teacher_identity"
                               in stored else stored.get("teacher") == str(getattr(teacher, "source", ""))):
        return stored
    result = _teacher_run(teacher, cfg, task, device)
    record_evaluation(db, study_name, "teacher", None, task, cfg, result)
    return result


# -- the CLI's entry point ----------------------------------------------------------------------------
def load_student(path: str | Path) -> nn.Module:
    """A student folder via AutoModel (trust_remote_code), or NasBertModel directly for model_type nas_bert."""
    path = Path(path)
    if not path.is_dir():
        raise NasBertError(f"model folder {path} does not exist; give a folder written by `nas-bert export`")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NasBertError(f"{path} is not a model folder (no config.json); give a folder written by `nas-bert export`")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise NasBertError(f"{config_file} is not a JSON object; the model folder is damaged") from None
    try:
        return AutoModel.from_pretrained(str(path), trust_remote_code=True)
    except LOAD_ERRORS as e:
        error = e
    if model_type == "nas_bert":  # folders without auto_map (or its code files) still load from our package
        from nas_bert.model import NasBertModel

        try:
            return NasBertModel.from_pretrained(str(path))
        except LOAD_ERRORS as e:
            error = e
    raise NasBertError(f"{path} could not be loaded as a model ({first_line(error)})")


def _load_tokenizer(path: Path, fallback: Any) -> Any:
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)  # the folder is ours
    except (OSError, ValueError, TypeError):  # no tokenizer files: students share the teacher's vocabulary
        return fallback


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


class EvaluationResult(Record):
    """Stage 8's result under one protocol: a student's metrics against the teacher (`subject`: its folder), or the
    teacher's own fine-tuned baseline (`teacher`: its source). Each has only its own keys; a baseline recorded by
    an older nas-bert keeps the keys it was recorded with."""

    model_config = ConfigDict(extra="allow")
    absent_unless_given: ClassVar[frozenset[str]] = frozenset({
        "subject", "arch_hash", "task", "fidelity", "cosine", "ood_fidelity", "ood_cosine", "accuracy",
        "teacher_accuracy", "accuracy_ratio", "accuracy_ratio_low", "accuracy_ratio_high", "label_loyalty", "probability_loyalty", "params", "teacher",
        "protocol_hash", "tasks", "pairs", "ood", "test_correct"})

    subject: str | None = None  # the student's folder
    arch_hash: str | None = None
    task: str | None = None
    fidelity: float | None = None  # on the task's held-out texts, without training
    cosine: float | None = None  # None: the student's width is not the teacher's
    ood_fidelity: float | None = None  # out of domain; absent without `evaluate.ood_texts`
    ood_cosine: float | None = None
    accuracy: float | None = None  # fine-tuned on the task
    teacher_accuracy: float | None = None
    accuracy_ratio: float | None = None  # None when the teacher's accuracy is 0
    accuracy_ratio_low: float | None = None  # its paired bootstrap 90% interval over the test examples
    accuracy_ratio_high: float | None = None
    label_loyalty: float | None = None
    probability_loyalty: float | None = None
    test_correct: str | None = None  # "0"/"1" per test example (evaluations recorded since it was added)
    params: int | None = None
    teacher: str | None = None  # the teacher's source (its baseline only)
    protocol_hash: str | None = None
    # the study's own data, by name (absent without `evaluate.tasks`, `evaluate.pairs`, `evaluate.ood`):
    tasks: dict[str, dict[str, Any]] | None = None  # each task's fidelity, accuracy, teacher_accuracy, loyalty...
    pairs: dict[str, dict[str, Any]] | None = None  # each pair set's spearman, teacher_spearman, pairs
    ood: dict[str, dict[str, Any]] | None = None  # each out-of-domain set's fidelity, cosine


# what a study's report says of each of its tasks
TASK_KEYS = ("fidelity", "cosine", "accuracy", "teacher_accuracy", "accuracy_ratio", "accuracy_ratio_low",
             "accuracy_ratio_high", "label_loyalty",
             "probability_loyalty")


def tasks_to_run(cfg: EvalConfig, task: str | None) -> list[Task]:
    """The tasks an evaluation fine-tunes on: with `task` None the study's `evaluate.tasks` (WordNet supersenses
    without any); else `task`: one of the study's tasks by name, "wordnet", a file or a Hub id."""
    if task is None:
        return list(cfg.tasks) or ["wordnet"]
    return [next((t for t in cfg.tasks if t.name == task), task)]


def evaluate_path(study: Any, path: str | None, teacher_only: bool = False, task: str | None = "wordnet",
                  cfg: EvalConfig | None = None) -> EvaluationResult:
    """`nas-bert evaluate PATH` / `--teacher`: evaluate, record in the database and in PATH/nas_bert.json.

    Its inputs (the fingerprint `nas-bert run` keys it by): the teacher, the space file's content, the corpus, the
    study's `evaluate` section and the budget's distillation stage. Returns an `EvaluationResult`: the student's
    metrics, or with `teacher_only` the teacher's baseline (its test probabilities left out). With `task` None every
    task of the study (`tasks_to_run`): the first gives the headline figures, each is reported by name in `tasks`,
    and the study's pair sets and out-of-domain sets by name in `pairs` and `ood`."""
    cfg = cfg or EvalConfig()
    tasks = tasks_to_run(cfg, task)
    if not teacher_only and path is None:
        raise NasBertError("give a model folder to evaluate, or --teacher for the teacher's baseline")
    folder = None if teacher_only else Path(path).expanduser().resolve()  # type: ignore[arg-type]
    student = load_student(folder) if folder is not None else None  # fail fast, before the teacher's fine-tuning
    device = study.device()
    db = Database(study.db_url)
    try:
        db.upsert_study(study.name, study.snapshot())
        teacher = load_teacher(study.cfg.teacher, device)
        bases = [teacher_baseline(db, study.name, teacher, cfg, t, device) for t in tasks]
        named = {"tasks": {b["task"]: {"accuracy": b["accuracy"]} for b in bases}} if cfg.tasks else {}
        if student is None or folder is None:
            return EvaluationResult(**{k: v for k, v in bases[0].items() if k != "test_probs"}, **named)
        info_file = folder / "nas_bert.json"
        try:
            info = json.loads(info_file.read_text()) if info_file.is_file() else None
        except json.JSONDecodeError as e:
            raise NasBertError(f"{info_file} is not valid JSON ({e}); re-export the model or remove the file") from None
        tokenizer = _load_tokenizer(folder, teacher.tokenizer)
        per_task = [evaluate_encoder(student, tokenizer, teacher, cfg, t, device, teacher_result=b, ood=i == 0)
                    for i, (t, b) in enumerate(zip(tasks, bases, strict=True))]
        metrics = dict(per_task[0])
        if cfg.tasks:
            metrics["tasks"] = {m["task"]: {k: m[k] for k in TASK_KEYS if k in m} for m in per_task}
        metrics |= study_data_agreement(student, tokenizer, teacher, cfg, device)
        arch_hash = info.get("hash") if isinstance(info, dict) else None
        if arch_hash is None and isinstance(getattr(student.config, "architecture", None), dict):
            from nas_bert.space import (
                Architecture,  # a distilled folder: its config holds the architecture
            )

            arch_hash = Architecture.from_dict(student.config.architecture).hash()
        record_evaluation(db, study.name, str(folder), arch_hash, tasks[0], cfg, metrics)
        if isinstance(info, dict):
            card = {k: v for k, v in metrics.items() if k != "test_correct"}  # the database keeps it; the folder's file stays readable
            info.setdefault("metrics", {}).update({**card, "eval_config": cfg.model_dump(mode="json")})
            _write_json_atomic(info_file, info)
        return EvaluationResult(subject=str(folder), arch_hash=arch_hash, **metrics)
    finally:
        db.dispose()
