"""Corpora for distillation: the shipped WordNet glosses, local files or Hub datasets.

The pipeline is ``load_raw`` (text splits) -> ``tokenize_and_pack`` (fixed-length token
blocks, cached by ``datasets``) -> ``make_collator`` (MLM masking at batch time).
``StepBatcher`` picks the examples of each optimiser step as a pure function of
(step, seed), so a resumed run sees exactly the batches it would have seen.

WordNet split rule (shipped file and ``split_of``): ``zlib.crc32(synset_id) % 100`` is
< 90 -> train, 90..94 -> validation, 95..99 -> test. It depends only on the synset id,
so the split never changes when the file is rebuilt.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import lzma
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch

from nas_bert.errors import NasBertError
from nas_bert.store import cached_sha256, fingerprint, folder_identity
from nas_bert.study import CorpusConfig

if TYPE_CHECKING:
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

__all__ = [
    "LEXNAMES",
    "WORDNET_PATH",
    "CorpusConfig",
    "CorpusError",
    "StepBatcher",
    "collate_indices",
    "fixed_batches",
    "load_corpus",
    "load_manpages",
    "load_raw",
    "load_wordnet_task",
    "make_collator",
    "padding_share",
    "split_of",
    "tokenize_and_pack",
]

log = logging.getLogger(__name__)

WORDNET_PATH = importlib.resources.files("nas_bert") / "data/wordnet.jsonl.xz"
# Out-of-domain English (Linux man pages' prose, scripts/build_manpages.py): evaluation only, never trained on.
MANPAGES_PATH = importlib.resources.files("nas_bert") / "data/manpages.jsonl.xz"

# WordNet 3.0 lexicographer files, indexed by their canonical file number (lexnames(5WN)).
# The record field ``label`` is this index.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive",
    "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition",
    "verb.communication", "verb.competition", "verb.consumption", "verb.contact",
    "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip

SPLITS = ("train", "validation", "test")
# Loader builder per file suffix (after an optional compression suffix).
_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_COMPRESSION = {".gz", ".xz", ".bz2", ".zst", ".lz4"}
# Columns the MLM collator can pad; anything else (strings, labels) would break it.
_MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")


class CorpusError(NasBertError, ValueError):
    """The corpus cannot be used as configured (empty, missing file, wrong column)."""


def split_of(synset_id: str) -> str:
    """Deterministic WordNet split of a synset id such as ``"n01234567"``."""
    bucket = zlib.crc32(synset_id.encode("utf-8")) % 100
    if bucket < 90:
        return "train"
    return "validation" if bucket < 95 else "test"


# --------------------------------------------------------------------------- raw text


def _wordnet_splits() -> datasets.DatasetDict:
    """The shipped WordNet records, split by their ``split`` column."""
    path = Path(str(WORDNET_PATH))
    if not path.is_file():
        raise CorpusError(
            f"shipped WordNet corpus missing at {path}; rebuild it with scripts/build_wordnet.py"
        )
    # The json builder decompresses .xz transparently and caches the Arrow table.
    full = datasets.load_dataset("json", data_files=str(path), split="train")
    return datasets.DatasetDict(
        {
            s: full.filter(
                lambda col, s=s: [v == s for v in col],
                batched=True,
                input_columns="split",
                desc=f"WordNet {s} split",
            )
            for s in SPLITS
        }
    )


def _is_local(name: str) -> bool:
    p = Path(name)
    if p.is_absolute():  # the study file made it so: a local path, present or not (never a Hub id)
        return True
    suffixes = [x.lower() for x in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    return p.exists() or bool(suffixes and suffixes[-1] in _BUILDERS)


def _local_file(name: str) -> datasets.DatasetDict:
    path = Path(name).expanduser()
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}; check corpus.name")
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    builder = _BUILDERS.get(suffixes[-1] if suffixes else "", "text")
    if path.stat().st_size == 0:  # the builders choke on empty files with obscure errors
        raise CorpusError(f"corpus file {path} is empty; point corpus.name at a file with text")
    try:
        return datasets.load_dataset(builder, data_files={"train": str(path)})
    except (datasets.exceptions.DatasetGenerationError, ValueError) as exc:
        raise CorpusError(f"could not read corpus file {path} as {builder}: {exc}") from exc


def _carve(ds: datasets.Dataset, fraction: float, seed: int, what: str) -> tuple[Any, Any]:
    """Split ``fraction`` of ``ds`` off (at least one example), seeded."""
    n = len(ds)
    n_out = max(1, round(fraction * n))
    if n - n_out < 1:
        raise CorpusError(
            f"corpus has only {n} training example(s), too few to carve a {what} split; "
            "add text or provide a validation split"
        )
    parts = ds.train_test_split(test_size=n_out, seed=seed)
    return parts["train"], parts["test"]


def _cap(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(n))


def load_raw(cfg: CorpusConfig) -> datasets.DatasetDict:
    """Text splits ``train``/``validation``/``test``; missing ones are carved from train.

    Caps take the first rows of each split; the shipped WordNet file is stored in
    hash order, so its first rows are a representative mix of parts of speech.
    """
    if cfg.name == "wordnet":
        dd = _wordnet_splits()
    elif _is_local(cfg.name):
        dd = _local_file(cfg.name)
    else:
        try:
            dd = datasets.load_dataset(cfg.name, cfg.subset)
        except (FileNotFoundError, ConnectionError) as exc:  # unknown id, or offline
            raise CorpusError(
                f"dataset {cfg.name!r} is neither a local file nor a reachable Hub dataset: {exc}"
            ) from exc
    if not isinstance(dd, datasets.DatasetDict):  # e.g. an IterableDatasetDict
        raise CorpusError(f"dataset {cfg.name!r} did not load as a map-style DatasetDict")
    for alias in ("valid", "dev"):  # common spellings of the validation split
        if "validation" not in dd and alias in dd:
            dd["validation"] = dd.pop(alias)
    if "train" not in dd:
        raise CorpusError(f"dataset {cfg.name!r} has no 'train' split (splits: {list(dd)})")

    col = cfg.resolved_text_column
    columns = dd["train"].column_names
    if col not in columns:
        raise CorpusError(
            f"text column {col!r} not in corpus {cfg.name!r}; available columns: {columns} "
            "(set corpus.text_column)"
        )
    # Blank lines (text files) would pack as bare [CLS] [SEP] pairs: drop them.
    dd = datasets.DatasetDict(
        {
            s: d.filter(
                lambda texts: [isinstance(t, str) and bool(t.strip()) for t in texts],
                batched=True,
                input_columns=col,
                desc=f"Dropping empty {s} texts",
            )
            for s, d in dd.items()
            if s in SPLITS
        }
    )
    train = dd["train"]
    if len(train) == 0:
        raise CorpusError(
            f"corpus {cfg.name!r} has no training text in column {col!r}; "
            "point corpus.name at a non-empty corpus"
        )
    if "validation" not in dd:
        train, dd["validation"] = _carve(train, cfg.validation_fraction, cfg.seed, "validation")
    if "test" not in dd:
        train, dd["test"] = _carve(train, cfg.validation_fraction, cfg.seed + 1, "test")
    dd["train"] = train
    return datasets.DatasetDict(
        {
            "train": _cap(dd["train"], cfg.max_train_examples),
            "validation": _cap(dd["validation"], cfg.max_eval_examples),
            "test": _cap(dd["test"], cfg.max_eval_examples),
        }
    )


def load_manpages(n: int | None = None) -> list[str]:
    """The first `n` sentences of the shipped out-of-domain set (stored in hash order: a fair sample)."""
    path = Path(str(MANPAGES_PATH))
    if not path.is_file():
        raise CorpusError(f"shipped manpages evaluation set missing at {path}; rebuild it with scripts/build_manpages.py")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    return texts[:n] if n else texts


def load_wordnet_task(
    max_train_examples: int | None = None, max_eval_examples: int | None = None
) -> datasets.DatasetDict:
    """Downstream task: classify a gloss (``text``) into its lexicographer file (``label``).

    ``label`` is a ClassLabel with the 45 ``LEXNAMES``
    (``ds["train"].features["label"].names``); the shipped split is used.
    """
    labels = datasets.ClassLabel(names=list(LEXNAMES))
    out = {}
    for s, d in _wordnet_splits().items():
        cap = max_train_examples if s == "train" else max_eval_examples
        d = _cap(d.select_columns(["gloss", "label", "lexname", "synset", "pos"]), cap)
        out[s] = d.rename_column("gloss", "text").cast_column("label", labels)
    return datasets.DatasetDict(out)


# --------------------------------------------------------------------------- tokens


def tokenize_and_pack(
    raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, cfg: CorpusConfig
) -> datasets.DatasetDict:
    """Tokenize every split; pack into blocks of exactly ``max_seq_length`` when ``cfg.pack``.

    Packing follows HF run_mlm.py ``group_texts``: each text keeps its [CLS] ... [SEP],
    texts are concatenated and cut into full blocks, the remainder of each map batch is
    dropped. Without packing each text is truncated and padded later by the collator.
    """
    col = cfg.resolved_text_column
    length, pack = cfg.max_seq_length, cfg.pack

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        enc = tokenizer(
            batch[col],
            add_special_tokens=True,
            return_special_tokens_mask=True,
            truncation=not pack,
            max_length=None if pack else length,
            verbose=False,  # packed texts may exceed model_max_length; blocks will not
        )
        enc = {k: enc[k] for k in _MODEL_COLUMNS if k in enc}
        if not pack:
            return enc
        out: dict[str, list[Any]] = {}
        for key, rows in enc.items():
            flat = [t for row in rows for t in row]
            usable = len(flat) // length * length
            out[key] = [flat[i : i + length] for i in range(0, usable, length)]
        return out

    out = {}
    for split, ds in raw.items():
        if col not in ds.column_names:
            raise CorpusError(
                f"text column {col!r} not in {split} split; available columns: {ds.column_names}"
            )
        out[split] = ds.map(
            encode,
            batched=True,
            remove_columns=ds.column_names,
            desc=f"Tokenizing {split}" + (f" into {length}-token blocks" if pack else ""),
        )
    for split in ("train", "validation"):
        if split in out and len(out[split]) == 0:
            raise CorpusError(
                f"{split} split yields zero sequences of {length} tokens (too little text); "
                "lower corpus.max_seq_length, raise the example caps, add text or set pack=false"
            )
    return datasets.DatasetDict(out)


def load_corpus(cfg: CorpusConfig, tokenizer: PreTrainedTokenizerBase) -> datasets.DatasetDict:
    """``load_raw`` then ``tokenize_and_pack``."""
    return tokenize_and_pack(load_raw(cfg), tokenizer, cfg)


def make_collator(
    tokenizer: PreTrainedTokenizerBase, cfg: CorpusConfig, mlm: bool = False
) -> DataCollatorForLanguageModeling:
    """Pads a batch; masks it for MLM only with `mlm` (a loss uses the teacher's MLM logits) and a
    positive `mlm_probability` (None means 0.15 then). Clean text otherwise: the labels are then the
    input ids at real tokens. Masking draws from torch's global RNG (saved in checkpoints), no seed."""
    from transformers import DataCollatorForLanguageModeling

    p = 0.15 if cfg.mlm_probability is None else cfg.mlm_probability
    if mlm and p > 0:
        return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=p, pad_to_multiple_of=None)
    return DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False, pad_to_multiple_of=None)


def padding_share(batch: dict[str, torch.Tensor]) -> float:
    """Share of padding positions (``attention_mask == 0``) in a collated batch."""
    mask = batch["attention_mask"]
    return float((mask == 0).sum().item()) / max(1, mask.numel())


# --------------------------------------------------------------------------- batching


class StepBatcher:
    """Stateless, resumable batching: examples of a global step are a function of (step, seed).

    Global step ``s`` covers positions ``[s*G, (s+1)*G)`` of the concatenation of epoch
    permutations ``randperm(n, seed + epoch)``, with ``G = batch_size * world_size``; rank
    ``r`` takes the strided share ``global[r::world_size]``.
    """

    def __init__(
        self, n_examples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if n_examples < 1 or batch_size < 1:
            raise ValueError("StepBatcher needs n_examples >= 1 and batch_size >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        self.n_examples, self.batch_size, self.seed = n_examples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._perms: dict[int, list[int]] = {}  # tiny memo; results never depend on it

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # consecutive steps touch at most two epochs
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n_examples, generator=gen).tolist()
        return self._perms[epoch]

    def global_indices(self, step: int) -> list[int]:
        """All examples of global step ``step`` (every rank's share)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        size, n = self.global_batch_size, self.n_examples
        pos, out = step * size, []
        while len(out) < size:  # may cross one or more epoch boundaries
            epoch, offset = divmod(pos, n)
            take = min(size - len(out), n - offset)
            out.extend(self._perm(epoch)[offset : offset + take])
            pos += take
        return out

    def indices(self, step: int) -> list[int]:
        """This rank's ``batch_size`` examples of global step ``step``."""
        return self.global_indices(step)[self.rank :: self.world_size]


def collate_indices(
    dataset: datasets.Dataset, indices: Sequence[int], collator: Any
) -> dict[str, torch.Tensor]:
    """Collate the given rows of a tokenized dataset into a batch."""
    cols = [c for c in _MODEL_COLUMNS if c in dataset.column_names]
    rows = dataset.select_columns(cols)[list(indices)]
    return collator(
        [dict(zip(cols, vals, strict=True)) for vals in zip(*rows.values(), strict=True)]
    )


def fixed_batches(
    dataset: datasets.Dataset, collator: Any, n_batches: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The first ``n_batches`` batches of ``dataset``, masked identically on every call.

    Masking runs under a forked CPU RNG seeded with ``seed``, so the caller's global RNG
    stream (and thus training) is unchanged. ``torch.manual_seed`` is avoided because it
    would also reseed CUDA generators.
    """
    n = min(len(dataset), n_batches * batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return [
            collate_indices(dataset, range(i, min(i + batch_size, n)), collator)
            for i in range(0, n, batch_size)
        ]


def corpus_identity(cfg: CorpusConfig) -> str:
    """The corpus settings (its preprocessing included) plus, for a local file or folder, its content."""
    blob = cfg.model_dump(mode="json")
    p = Path(str(cfg.name)).expanduser()
    if p.is_file():
        blob["file_sha256"] = cached_sha256(p)
    elif p.is_dir():
        blob["folder"] = folder_identity(p)
    return fingerprint(blob)
