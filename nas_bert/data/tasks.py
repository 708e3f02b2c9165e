"""Downstream tasks for evaluation: the shipped WordNet supersense task, a local file or a Hub dataset.

Every task comes out the same way: train/validation/test splits with a text column and an integer
label column (ClassLabel), and the label names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from nas_bert.data.corpus import load_wordnet_task
from nas_bert.errors import NasBertError
from nas_bert.study import EvalConfig

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


def _labelled(dd: datasets.DatasetDict, source: str, seed: int) -> tuple[datasets.DatasetDict, list[str]]:
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
    for split in ("test", "validation"):  # carve what is missing: 10% each, seeded
        if split not in dd:
            if len(train) < 3:
                raise NasBertError(f"{source} has only {len(train)} labelled training row(s); too few to split")
            parts = train.train_test_split(test_size=max(1, round(0.1 * len(train))), seed=seed)
            train, dd[split] = parts["train"], parts["test"]
    dd["train"] = train
    return dd, names


_TASKS: dict[tuple[Any, ...], tuple[datasets.DatasetDict, list[str]]] = {}


def load_task(task: str, cfg: EvalConfig) -> tuple[datasets.DatasetDict, list[str]]:
    """(train/validation/test with columns text and label (int), label names) for a task name.

    "wordnet": the shipped gloss -> lexicographer file task (45 classes, shipped split, first
    rows as caps); otherwise a local .csv/.json/.jsonl or a Hub id (seeded caps).
    """
    key = (task, cfg.max_train_examples, cfg.max_eval_examples, cfg.seed)
    if key in _TASKS:  # teacher and student runs of one evaluation share the splits
        return _TASKS[key]
    if task == "wordnet":
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
