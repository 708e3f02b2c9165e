"""Downstream tasks for evaluation: the shipped WordNet supersense task, a local file or a Hub dataset; and a
study's own data (`evaluate.tasks`, `evaluate.pairs`, `evaluate.ood`), checked before any training.

Every task comes out the same way: train/validation/test splits with a text column and an integer
label column (ClassLabel), and the label names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from nas_bert.data.corpus import load_wordnet_task
from nas_bert.errors import NasBertError
from nas_bert.evaluation_config import EvalConfig, OodData, PairData, TaskData
from nas_bert.store import file_sha256, json_hash

_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json"}
_SPLITS = ("train", "validation", "test")
# What loading a dataset or model folder raises for a user's mistake (bad id, offline, damaged files).
LOAD_ERRORS = (OSError, ValueError, KeyError, ImportError, TypeError, AttributeError, RuntimeError)


def _cap(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    # Shuffle before capping: files are often sorted by label, so their first rows would be one class.
    return ds if n is None or n >= len(ds) else ds.shuffle(seed=seed).select(range(n))


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _is_local(task: str) -> bool:
    p = Path(task).expanduser()
    return p.exists() or p.suffix.lower() in _BUILDERS or task.startswith((".", "/", "~"))


def _load_source(task: str) -> tuple[datasets.DatasetDict, str]:
    """Raw splits of a local file or a Hub dataset, and how to name the source in errors."""
    if _is_local(task):
        path = Path(task).expanduser()
        if not path.is_file():
            raise NasBertError(f"task file {path} not found; give 'wordnet', a .csv/.json/.jsonl file or a Hub id")
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise NasBertError(f"task file {path}: unsupported format; use .csv, .json or .jsonl")
        try:
            return datasets.load_dataset(builder, data_files=str(path)), f"task file {path}"
        except (datasets.exceptions.DatasetGenerationError, ValueError) as e:
            raise NasBertError(f"task file {path} could not be read as {builder} ({first_line(e)})") from None
    try:
        dd = datasets.load_dataset(task)
    except LOAD_ERRORS as e:  # unknown id, offline, bad config: all one line for the user
        raise NasBertError(f"task {task!r} is neither 'wordnet', a local file nor a loadable Hub dataset "
                           f"({first_line(e)})") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise NasBertError(f"task {task!r} did not load as a DatasetDict of splits")
    return dd, f"task {task!r}"


def _labelled(dd: datasets.DatasetDict, source: str, seed: int,
              fraction: float = 0.1) -> tuple[datasets.DatasetDict, list[str]]:
    """Columns text/label (int), labelled rows only, and all three splits (carved from train if missing)."""
    for alias in ("valid", "dev"):
        if "validation" not in dd and alias in dd:
            dd["validation"] = dd.pop(alias)
    if "train" not in dd:
        raise NasBertError(f"{source} has no 'train' split (splits: {list(dd)})")
    columns = dd["train"].column_names
    text_col = next((c for c in ("text", "sentence") if c in columns), None)
    if text_col is None or "label" not in columns:
        raise NasBertError(f"{source} needs a 'text' (or 'sentence') and a 'label' column; it has {columns}")
    is_class = isinstance(dd["train"].features["label"], datasets.ClassLabel)

    def keep(text: Any, label: Any) -> bool:  # blank texts break nothing but teach nothing; -1 is "unlabelled"
        return isinstance(text, str) and bool(text.strip()) and label is not None and (not is_class or label >= 0)

    dd = datasets.DatasetDict({s: d.select_columns([text_col, "label"]).filter(keep, input_columns=[text_col, "label"])
                               for s, d in dd.items() if s in _SPLITS})
    if is_class:
        names = list(dd["train"].features["label"].names)
    else:  # raw values: sorted over all splits, so every split agrees on the ids
        values = sorted({v for d in dd.values() for v in d["label"]})
        ids, names = {v: i for i, v in enumerate(values)}, [str(v) for v in values]
        dd = datasets.DatasetDict({
            s: d.map(lambda y: {"label": ids[y]}, input_columns="label").cast_column("label", datasets.ClassLabel(names=names))
            for s, d in dd.items()
        })
    if text_col != "text":
        dd = datasets.DatasetDict({s: d.rename_column(text_col, "text") for s, d in dd.items()})
    dd = datasets.DatasetDict({s: d for s, d in dd.items() if len(d)})  # e.g. GLUE's unlabelled test split
    train = dd["train"]
    for split in ("test", "validation"):  # carve what is missing: `fraction` (10%) each, seeded
        if split not in dd:
            if len(train) < 3:
                raise NasBertError(f"{source} has only {len(train)} labelled training row(s); too few to split")
            parts = train.train_test_split(test_size=max(1, round(fraction * len(train))), seed=seed)
            train, dd[split] = parts["train"], parts["test"]
    dd["train"] = train
    return dd, names


_TASKS: dict[tuple[Any, ...], tuple[datasets.DatasetDict, list[str]]] = {}


def load_task(task: str | TaskData, cfg: EvalConfig) -> tuple[datasets.DatasetDict, list[str]]:
    """(train/validation/test with columns text and label (int), label names) for a task name.

    "wordnet": the shipped gloss -> lexicographer file task (45 classes, shipped split, first
    rows as caps); otherwise a local .csv/.json/.jsonl or a Hub id (seeded caps); a study's own
    task (`TaskData`) with its columns, its test file or fraction.
    """
    name = task.model_dump_json() if isinstance(task, TaskData) else task
    key = (name, cfg.max_train_examples, cfg.max_eval_examples, cfg.seed)
    if key in _TASKS:  # teacher and student runs of one evaluation share the splits
        return _TASKS[key]
    if isinstance(task, TaskData):
        dd, names = _study_task(task, cfg.seed)
        dd = datasets.DatasetDict({
            s: _cap(dd[s], cfg.max_train_examples if s == "train" else cfg.max_eval_examples, cfg.seed)
            for s in _SPLITS
        })
    elif task == "wordnet":
        dd = load_wordnet_task(cfg.max_train_examples, cfg.max_eval_examples)
        names = list(dd["train"].features["label"].names)
        dd = datasets.DatasetDict({s: d.select_columns(["text", "label"]) for s, d in dd.items()})
    else:
        dd, names = _labelled(*_load_source(task), seed=cfg.seed)
        dd = datasets.DatasetDict({
            s: _cap(dd[s], cfg.max_train_examples if s == "train" else cfg.max_eval_examples, cfg.seed)
            for s in _SPLITS
        })
    _TASKS[key] = (dd, names)
    return dd, names


# -- a study's own data: evaluate.tasks, evaluate.pairs, evaluate.ood --------------------------------------------
def data_identity(item: dict[str, Any]) -> str:
    """What a study's data set is made from: the content of its local files, else its Hub id (as given)."""
    files = [item[k] for k in ("data", "test") if item.get(k)]
    return json_hash([file_sha256(f) if Path(f).is_file() else f for f in files])


def _table(data: str, split: str | None, what: str) -> tuple[datasets.Dataset, str]:
    """One table of a study's data set: a local .txt (column text), .csv, .json or .jsonl file, or a split of a Hub
    dataset; and how errors name it."""
    path = Path(data).expanduser()
    if _is_local(data) or path.suffix.lower() == ".txt":
        source = f"{what} file {path}"
        if not path.is_file():
            raise NasBertError(f"{source} not found; fix the path (relative paths are read against the study file's "
                               "folder)")
        if path.suffix.lower() == ".txt":
            return datasets.Dataset.from_dict({"text": [t for t in path.read_text().splitlines() if t.strip()]}), source
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise NasBertError(f"{source}: unsupported format; use .csv, .json or .jsonl"
                               + (" (or .txt, one text a line)" if what == "ood" else ""))
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train"), source
        except (datasets.exceptions.DatasetGenerationError, ValueError) as e:
            if sum(1 for line in path.read_text().splitlines() if line.strip()) <= (builder == "csv"):
                raise NasBertError(f"{source} is empty (no rows{' under its header' if builder == 'csv' else ''}); "
                                   "give a file with rows") from None
            raise NasBertError(f"{source} could not be read as {builder} ({first_line(e)})") from None
    source = f"{what} {data!r}"
    try:
        dd = datasets.load_dataset(data)
    except LOAD_ERRORS as e:
        raise NasBertError(f"{source} is neither a local file nor a loadable Hub dataset ({first_line(e)})") from None
    if split is None:
        return dd, source  # type: ignore[return-value]  # a task's splits, all of them
    if split not in dd:
        raise NasBertError(f"{source} has no split {split!r} (splits: {list(dd)}); set its split to one of them")
    return dd[split], source


def _column(ds: datasets.Dataset, column: str, source: str, key: str) -> None:
    if column not in ds.column_names:
        raise NasBertError(f"{source} has no column {column!r} (columns: {ds.column_names}); set {key} to one of them")


def _nonempty(ds: datasets.Dataset, source: str, what: str) -> None:
    if len(ds) == 0:
        raise NasBertError(f"{source}: the {what} is empty; give a file with rows")


def _study_task(task: TaskData, seed: int) -> tuple[datasets.DatasetDict, list[str]]:
    """A study's task as train/validation/test (text, label) and its label names, every mistake one line."""
    raw, source = _table(task.data, None, f"task {task.name!r}")
    dd = raw if isinstance(raw, datasets.DatasetDict) else datasets.DatasetDict({"train": raw})
    if task.test:
        test, test_source = _table(task.test, "test", f"task {task.name!r} test")
        dd["test"] = test if isinstance(test, datasets.Dataset) else test["test"]
    for split, ds in dd.items():
        where = test_source if split == "test" and task.test else source
        _column(ds, task.text_column, where, f"evaluate.tasks[{task.name}].text_column")
        _column(ds, task.label_column, where, f"evaluate.tasks[{task.name}].label_column")
        _nonempty(ds, where, f"{split} split")
    dd = datasets.DatasetDict({s: d.select_columns([task.text_column, task.label_column])
                               .rename_columns({task.text_column: "text", task.label_column: "label"})
                               for s, d in dd.items()})
    classes = set(dd["train"]["label"]) - {None}
    if len(classes) < 2:
        raise NasBertError(f"{source}: label column {task.label_column!r} holds {len(classes)} class(es) "
                           f"({sorted(map(str, classes))}); a task needs two or more: check the column or the file")
    out, names = _labelled(dd, source, seed, task.test_fraction)
    for split in _SPLITS:
        _nonempty(out[split], source, f"{split} split (after dropping blank texts and unlabelled rows)")
    return out, names


def load_pairs(pairs: PairData) -> tuple[list[str], list[str], list[float]]:
    """A sentence-pair set: first texts, second texts, gold scores (numbers), at most `max_pairs`."""
    ds, source = _table(pairs.data, pairs.split, f"pairs {pairs.name!r}")
    for key in ("text1_column", "text2_column", "score_column"):
        _column(ds, getattr(pairs, key), source, f"evaluate.pairs[{pairs.name}].{key}")
    _nonempty(ds, source, "pair set")
    a, b, y = ds[pairs.text1_column], ds[pairs.text2_column], ds[pairs.score_column]
    scores = []
    for v in y:
        try:
            scores.append(float(v))
        except (TypeError, ValueError):
            raise NasBertError(f"{source}: score column {pairs.score_column!r} is not numeric (e.g. {v!r}); give "
                               "a column of numbers as score_column") from None
    keep = [i for i in range(len(scores)) if isinstance(a[i], str) and isinstance(b[i], str)][: pairs.max_pairs]
    if len(keep) < 3:
        raise NasBertError(f"{source}: {len(keep)} pair(s) with both texts; a Spearman correlation needs 3 or more")
    return [a[i] for i in keep], [b[i] for i in keep], [scores[i] for i in keep]


def load_ood(ood: OodData) -> list[str]:
    """An out-of-domain text set: its non-blank texts, at most `max_texts`."""
    ds, source = _table(ood.data, ood.split, f"ood {ood.name!r}")
    _column(ds, ood.text_column, source, f"evaluate.ood[{ood.name}].text_column")
    texts = [t for t in ds[ood.text_column] if isinstance(t, str) and t.strip()][: ood.max_texts]
    if len(texts) < 3:
        raise NasBertError(f"{source}: {len(texts)} non-blank text(s) in column {ood.text_column!r}; fidelity needs "
                           "3 or more")
    return texts


def check_study_data(cfg: EvalConfig) -> None:
    """Load every task, pair set and out-of-domain set of a study once, so that a missing file or column, a label
    column of one class, an empty split or a score column that is not numeric is one line before any training."""
    for task in cfg.tasks:
        load_task(task, cfg)
    for pairs in cfg.pairs:
        load_pairs(pairs)
    for ood in cfg.ood:
        load_ood(ood)
