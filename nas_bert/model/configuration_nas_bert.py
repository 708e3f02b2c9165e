"""Configuration of an extracted nas-bert student (self-contained: ships with exported models)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class NasBertConfig(PretrainedConfig):
    """Holds the student's architecture JSON (embeddings + blocks of heterogeneous sublayers)."""

    model_type = "nas_bert"

    def __init__(
        self,
        architecture: dict[str, Any] | None = None,
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        pad_token_id: int = 0,
        dim_order: list[int] | None = None,
        position_padding_idx: int | None = None,
        relative_attention: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.architecture = architecture or {
            "embeddings": {"vocab_size": 2, "max_positions": 8, "type_vocab_size": 1, "width": 8},
            "blocks": [{"hidden": 8, "ops": [{"op": "ffn", "inner": 8}]}],
        }
        # hidden dimension k is the teacher's dimension dim_order[k] (None: the teacher's own order)
        self.dim_order = list(dim_order) if dim_order is not None else None
        # None: positions 0..T-1 (BERT); p: RoBERTa's and MPNet's, real tokens from p + 1 and padding tokens
        # (input id p) at p, as transformers' create_position_ids_from_input_ids
        self.position_padding_idx = position_padding_idx
        # MPNet's relative position bias, None elsewhere: a (rows, heads) table of the teacher's heads, T5's bidirectional
        # buckets (num_buckets, max_distance) of key - query position; each attention layer adds its heads' columns
        self.relative_attention = dict(relative_attention) if relative_attention else None
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        emb = self.architecture["embeddings"]
        self.vocab_size = emb["vocab_size"]
        self.max_position_embeddings = emb["max_positions"]
        self.type_vocab_size = emb["type_vocab_size"]
        self.embedding_size = emb["width"]
        # `hidden_size` is what last_hidden_state carries: the output projection's width, else the last block's.
        self.hidden_size = self.architecture.get("output") or self.architecture["blocks"][-1]["hidden"]
        super().__init__(pad_token_id=pad_token_id, **kwargs)
