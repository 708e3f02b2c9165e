"""Where each BERT-family teacher keeps its weights: one adapter per family, as data.

Every family here is a post-LayerNorm encoder: attention (query, key, value, output), a residual and LayerNorm,
then a feed-forward (in, GELU, out), a residual and LayerNorm; its embeddings are word + position (+ token type)
tables and a LayerNorm. They differ in module names and in three details a copied student must reproduce:

- position ids: BERT, ELECTRA and DistilBERT number positions 0..T-1; RoBERTa, XLM-R, CamemBERT and MPNet
  number real tokens from padding_idx + 1 and give padding tokens padding_idx (`create_position_ids_from_input_ids`);
  their embeddings module carries that `padding_idx`, BERT's does not;
- token types: DistilBERT and MPNet have none (the student's one-row table is then zero);
- MPNet adds a relative position bias to every layer's attention scores: one table (buckets x heads) shared by
  all layers, its buckets computed once per forward (`RelativeAttention`).

Paths are relative to the base model (`Teacher.encoder`: BertModel, RobertaModel, DistilBertModel, ...), and
were read off transformers 5's modeling_<family>.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from nas_bert.errors import NasBertError

# the names a student's copy reads in each teacher layer, in this order
PARTS = ("query", "key", "value", "attn_out", "attn_norm", "ffn_in", "ffn_out", "ffn_norm")


@dataclass(frozen=True)
class TeacherLayer:
    """One teacher layer's linears and LayerNorms under family-independent names."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ffn_norm: nn.LayerNorm


@dataclass(frozen=True)
class TeacherEmbeddings:
    """The teacher's embedding tables and LayerNorm, and how it numbers positions."""

    word: nn.Embedding
    position: nn.Embedding
    token_type: nn.Embedding | None  # None: the family has no token types
    norm: nn.LayerNorm
    padding_idx: int | None  # None: positions 0..T-1; p: real tokens from p + 1, padding tokens at p (RoBERTa)

    @classmethod
    def of(cls, module: nn.Module) -> TeacherEmbeddings:
        """Read an embeddings module of any family here (all name their tables alike; the families that number
        positions from padding_idx + 1 keep `padding_idx` on the module, as their own forward reads it)."""
        try:
            word, position, norm = module.word_embeddings, module.position_embeddings, module.LayerNorm
        except AttributeError:
            raise NasBertError(f"teacher embeddings {type(module).__name__} lack word_embeddings / position_embeddings "
                               f"/ LayerNorm; supported families: {supported()}") from None
        padding_idx = getattr(module, "padding_idx", None)
        return cls(word, position, getattr(module, "token_type_embeddings", None), norm,
                   None if padding_idx is None else int(padding_idx))

    @property
    def position_offset(self) -> int:
        """The position id of the first real token."""
        return 0 if self.padding_idx is None else self.padding_idx + 1

    def student_settings(self) -> dict[str, Any]:
        """The student config fields that reproduce these embeddings (NasBertConfig keywords)."""
        pad = self.word.padding_idx
        return {"pad_token_id": 0 if pad is None else int(pad), "position_padding_idx": self.padding_idx}


@dataclass(frozen=True)
class RelativeAttention:
    """MPNet's relative position bias: bucket(key position - query position) -> one bias per head, added to
    every layer's attention scores (T5's bidirectional buckets, `num_buckets` and `max_distance`)."""

    table: nn.Embedding  # (rows, teacher heads)
    num_buckets: int
    max_distance: int

    def spec(self) -> dict[str, int]:
        """What a student or supernet needs to hold the table (NasBertConfig.relative_attention)."""
        rows, heads = self.table.weight.shape
        return {"rows": int(rows), "heads": int(heads), "num_buckets": self.num_buckets, "max_distance": self.max_distance}


@dataclass(frozen=True)
class Family:
    """A family's module names; `parts` maps PARTS to paths inside layer i of `layers`."""

    name: str
    model_types: tuple[str, ...]
    layers: str
    parts: tuple[str, ...]
    embeddings: str = "embeddings"
    pooler: bool = True  # the base model takes add_pooling_layer (a pooler we never use)
    relative_bias: str | None = None  # path of a shared relative position bias table
    relative_buckets: tuple[int, int] = (32, 128)  # (num_buckets, max_distance) its forward computes with
    config_names: dict[str, str] = field(default_factory=dict)  # BERT's config name -> this family's
    config_values: dict[str, Any] = field(default_factory=dict)  # BERT's config name -> the value the family fixes

    def layer(self, encoder: nn.Module, i: int) -> TeacherLayer:
        block = encoder.get_submodule(f"{self.layers}.{i}")
        return TeacherLayer(*(block.get_submodule(p) for p in self.parts))

    def teacher_layers(self, encoder: nn.Module) -> list[TeacherLayer]:
        try:
            return [self.layer(encoder, i) for i in range(len(encoder.get_submodule(self.layers)))]
        except AttributeError as e:
            raise NasBertError(f"teacher ({self.name} family) lacks a module its adapter names ({e}); "
                               "it is not the architecture its config.json says") from None

    def embeddings_of(self, encoder: nn.Module) -> TeacherEmbeddings:
        return TeacherEmbeddings.of(encoder.get_submodule(self.embeddings))

    def relative_attention(self, encoder: nn.Module) -> RelativeAttention | None:
        if self.relative_bias is None:
            return None
        return RelativeAttention(encoder.get_submodule(self.relative_bias), *self.relative_buckets)

    def with_bert_names(self, config: Any) -> Any:
        """The config, also answering to BERT's names (intermediate_size, hidden_act, layer_norm_eps) that the rest of
        nas-bert reads: DistilBERT calls them hidden_dim and activation, and fixes its LayerNorms' eps at 1e-12."""
        for bert, own in self.config_names.items():
            if not hasattr(config, bert):
                setattr(config, bert, getattr(config, own))
        for bert, value in self.config_values.items():
            if not hasattr(config, bert):
                setattr(config, bert, value)
        return config

    def check(self, config: Any) -> None:
        """What a config of this family must satisfy for a student to reproduce it."""
        if self.name == "electra" and int(config.embedding_size) != int(config.hidden_size):
            raise NasBertError(f"ELECTRA teacher with embedding_size {config.embedding_size} != hidden_size "
                               f"{config.hidden_size}: its embeddings projection has no student counterpart; use one "
                               "whose embeddings are as wide as its layers")


_BERT_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")

FAMILIES = (
    # bge, e5, gte, MiniLM and the sentence-transformers MiniLMs are model_type "bert"
    Family("bert", ("bert",), "encoder.layer", _BERT_PARTS),
    Family("roberta", ("roberta", "xlm-roberta", "camembert"), "encoder.layer", _BERT_PARTS),
    Family("electra", ("electra",), "encoder.layer", _BERT_PARTS, pooler=False),
    Family("distilbert", ("distilbert",), "transformer.layer",
           ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm",
            "ffn.lin1", "ffn.lin2", "output_layer_norm"),
           pooler=False, config_names={"intermediate_size": "hidden_dim", "hidden_act": "activation"},
           config_values={"layer_norm_eps": 1e-12}),  # nn.LayerNorm(config.dim, eps=1e-12) throughout
    # MPNetEncoder.compute_position_bias calls relative_position_bucket with num_buckets=32 and max_distance=128
    # whatever relative_attention_num_buckets says (that only sizes the table)
    Family("mpnet", ("mpnet",), "encoder.layer",
           ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o", "attention.LayerNorm",
            "intermediate.dense", "output.dense", "output.LayerNorm"),
           relative_bias="encoder.relative_attention_bias"),
)


def supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def find_family(config: Any) -> Family | None:
    model_type = getattr(config, "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_of(config: Any) -> Family:
    """The adapter for a transformers config, checked; one line naming the supported families otherwise."""
    family = find_family(config)
    if family is None:
        raise NasBertError(f"teacher model type '{getattr(config, 'model_type', None)}' is not a supported BERT-family "
                           f"encoder; supported: {supported()}")
    family.check(config)
    return family
