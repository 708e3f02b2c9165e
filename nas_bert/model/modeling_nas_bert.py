"""A nas-bert student as a transformers model (self-contained: ships with exported models).

The functional forms below (`attention`, `feed_forward`, `sep_conv`, `post_norm`, `resize`) are the
only definition of each operator's math: the supernet calls them with sliced shared weights and the
student calls them with its own copies, so an extracted student computes exactly its sub-path.

A student's hidden dimensions are the teacher's, reordered by importance (`dim_order`: hidden
dimension k is the teacher's dimension dim_order[k]), so a block of width h keeps the leading h.
Between blocks nothing is spent where nothing changes: equal widths pass the state on as it is, a
narrower block takes the leading dimensions, and only a wider block pays for a linear map that
predicts its extra dimensions from the ones it receives. The output returns to the teacher's
dimensions: a linear map from a narrower last block, a reordering from a full-width one.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_nas_bert import NasBertConfig

Tensor = torch.Tensor


# -- operator math, shared with the supernet ---------------------------------------------------
def mask_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias for attention scores."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def attention(
    x: Tensor, wq: Tensor, bq: Tensor, wk: Tensor, bk: Tensor, wv: Tensor, bv: Tensor,
    wo: Tensor, bo: Tensor, heads: int, bias: Tensor | None, dropout: float = 0.0,
) -> Tensor:
    """Multi-head self-attention; x (B, T, h) -> (B, T, h). The heads share wq.shape[0] dimensions (the block's
    width, or fewer or more: a layer may keep some of the teacher's heads at any width)."""
    B, T, _ = x.shape
    a = wq.shape[0]
    hs = a // heads
    q = F.linear(x, wq, bq).view(B, T, heads, hs).transpose(1, 2)  # (B, nh, T, hs)
    k = F.linear(x, wk, bk).view(B, T, heads, hs).transpose(1, 2)
    v = F.linear(x, wv, bv).view(B, T, heads, hs).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
    return F.linear(y.transpose(1, 2).reshape(B, T, a), wo, bo)


def relative_position_bucket(relative: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """MPNet's (T5's bidirectional) bucket of each relative position (key - query): half the buckets per direction,
    exact up to a quarter of them, then logarithmic up to max_distance."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).to(torch.long) * half
    n = torch.abs(n)
    exact = half // 2
    large = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (half - exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, half - 1))
    return ret + torch.where(n < exact, n, large)


def position_bias(table: Tensor, T: int, num_buckets: int, max_distance: int) -> Tensor:
    """A (rows, heads) relative bias table -> (1, heads, T, T) added to attention scores, computed once per forward."""
    pos = torch.arange(T, dtype=torch.long, device=table.device)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], num_buckets, max_distance)  # (T, T)
    return F.embedding(buckets, table).permute(2, 0, 1).unsqueeze(0)


def head_bias(bias: Tensor | None, relative: Tensor | None, heads: Tensor | None) -> Tensor | None:
    """The mask bias (B, 1, 1, T) plus the relative position bias of the layer's heads `heads` (the teacher's heads it
    keeps, in its order): (B, k, T, T); the mask bias alone without a relative bias."""
    if relative is None or heads is None:
        return bias
    rel = relative.index_select(1, heads)  # (1, k, T, T)
    return rel if bias is None else rel + bias


def feed_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Position-wise feed-forward with GELU; x (B, T, h) -> (B, T, h) via inner size w1.shape[0]."""
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def sep_conv(x: Tensor, wd: Tensor, bd: Tensor, wp: Tensor, bp: Tensor, mask: Tensor | None) -> Tensor:
    """Separable 1-D convolution over the sequence: depthwise (kernel wd.shape[-1]), pointwise, GELU.

    Padding tokens are zeroed first so they never leak into real tokens' receptive fields.
    """
    if mask is not None:
        x = x * mask[:, :, None].to(x.dtype)
    h, k = wd.shape[0], wd.shape[-1]
    y = F.conv1d(x.transpose(1, 2), wd, bd, padding=k // 2, groups=h).transpose(1, 2)  # (B, T, h)
    return F.gelu(F.linear(y, wp, bp))


def post_norm(x: Tensor, y: Tensor, w: Tensor, b: Tensor, eps: float, dropout: float, training: bool) -> Tensor:
    """BERT's residual sublayer: LayerNorm(x + dropout(y))."""
    y = F.dropout(y, dropout, training)
    return F.layer_norm(x + y, (x.shape[-1],), w, b, eps)


def resize(x: Tensor, width: int, grow_w: Tensor | None = None, grow_b: Tensor | None = None) -> Tensor:
    """Into the next block's width: (B, T, h_in) -> (B, T, width). The same width passes as it is; a
    narrower one keeps the leading dimensions; a wider one appends (grow_w x + grow_b)[..., :width - h_in],
    a linear prediction of the dimensions it lacks."""
    h = x.shape[-1]
    if width == h:
        return x
    if width < h:
        return x[..., :width]
    return torch.cat([x, F.linear(x, grow_w[: width - h], grow_b[: width - h])], dim=-1)


# -- the student's modules ----------------------------------------------------------------------
class NasBertEmbeddings(nn.Module):
    """BERT's embeddings (copied from the teacher), at the teacher's width."""

    def __init__(self, config: NasBertConfig) -> None:
        super().__init__()
        e = config.embedding_size
        self.word_embeddings = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, e)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, e)
        self.LayerNorm = nn.LayerNorm(e, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.padding_idx = getattr(config, "position_padding_idx", None)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None) -> Tensor:
        T = input_ids.shape[1]
        if position_ids is None and self.padding_idx is None:
            position_ids = torch.arange(T, device=input_ids.device)[None, :]
        elif position_ids is None:  # RoBERTa's and MPNet's: real tokens count from padding_idx + 1, padding stays
            real = input_ids.ne(self.padding_idx).int()
            position_ids = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.padding_idx
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class NasBertLayer(nn.Module):
    """One non-identity sublayer: attention, feed-forward or separable convolution, then post-LN."""

    def __init__(self, config: NasBertConfig, hidden: int, op: dict[str, Any]) -> None:
        super().__init__()
        self.kind = op["op"]
        self.dropout = config.hidden_dropout_prob
        self.attention_dropout = config.attention_probs_dropout_prob
        self.eps = config.layer_norm_eps
        if self.kind == "mha" and getattr(config, "relative_attention", None):
            # MPNet: which of the teacher's heads (columns of the relative bias table) this layer keeps, in its order
            self.register_buffer("relative_heads", torch.arange(op["heads"]))
        else:
            self.relative_heads: Tensor | None = None
        if self.kind == "mha":
            self.heads = op["heads"]
            a = op.get("inner") or hidden  # the heads' dimensions
            self.query, self.key, self.value = (nn.Linear(hidden, a) for _ in range(3))
            self.output = nn.Linear(a, hidden)
        elif self.kind == "ffn":
            self.intermediate = nn.Linear(hidden, op["inner"])
            self.output = nn.Linear(op["inner"], hidden)
        elif self.kind == "sepconv":
            k = op["kernel"]
            self.depthwise = nn.Conv1d(hidden, hidden, k, padding=k // 2, groups=hidden)
            self.pointwise = nn.Linear(hidden, hidden)
        else:
            raise ValueError(f"unknown operator {self.kind!r}")
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, x: Tensor, bias: Tensor | None, mask: Tensor | None, relative: Tensor | None = None) -> Tensor:
        """x (B, T, h); `relative` the model's relative position bias (1, teacher heads, T, T), if it has one."""
        if self.kind == "mha":
            p = self.attention_dropout if self.training else 0.0
            y = attention(
                x, self.query.weight, self.query.bias, self.key.weight, self.key.bias,
                self.value.weight, self.value.bias, self.output.weight, self.output.bias, self.heads,
                head_bias(bias, relative, self.relative_heads), p,
            )
        elif self.kind == "ffn":
            y = feed_forward(x, self.intermediate.weight, self.intermediate.bias, self.output.weight, self.output.bias)
        else:
            y = sep_conv(x, self.depthwise.weight, self.depthwise.bias, self.pointwise.weight, self.pointwise.bias, mask)
        return post_norm(x, y, self.LayerNorm.weight, self.LayerNorm.bias, self.eps, self.dropout, self.training)


class NasBertBlock(nn.Module):
    """Into the block's width (`resize`; a linear `grow` only when it is wider than its input), then
    its non-identity sublayers."""

    def __init__(self, config: NasBertConfig, in_width: int, block: dict[str, Any]) -> None:
        super().__init__()
        self.width = block["hidden"]
        self.grow = nn.Linear(in_width, self.width - in_width) if self.width > in_width else None
        self.layers = nn.ModuleList(NasBertLayer(config, block["hidden"], op) for op in block["ops"] if op["op"] != "identity")

    def enter(self, x: Tensor) -> Tensor:
        """(B, T, in_width) -> (B, T, width)."""
        if self.grow is None:
            return resize(x, self.width)
        return resize(x, self.width, self.grow.weight, self.grow.bias)


class NasBertPreTrainedModel(PreTrainedModel):
    config_class = NasBertConfig
    config: NasBertConfig
    base_model_prefix = "nas_bert"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            module.weight.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, 0.02)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


class NasBertModel(NasBertPreTrainedModel):
    """Embeddings -> blocks -> output projection; last_hidden_state (B, T, the teacher's width, or the last
    block's when the architecture has no output projection); hidden_states: embeddings, then every sublayer."""

    def __init__(self, config: NasBertConfig) -> None:
        super().__init__(config)
        self.embeddings = NasBertEmbeddings(config)
        widths = [config.embedding_size] + [b["hidden"] for b in config.architecture["blocks"]]
        self.blocks = nn.ModuleList(
            NasBertBlock(config, widths[i], b) for i, b in enumerate(config.architecture["blocks"])
        )
        output = config.architecture.get("output")
        # back to the teacher's dimensions: a linear map from a narrower last block, else a reordering
        self.output_projection = nn.Linear(widths[-1], output) if output and output != widths[-1] else None
        rel = getattr(config, "relative_attention", None)
        # MPNet's relative position bias: one table for every layer, as the teacher's
        self.relative_attention_bias = nn.Embedding(rel["rows"], rel["heads"]) if rel else None
        order = config.dim_order if output and output == widths[-1] else None
        if order is not None and list(order) != list(range(len(order))):
            self.register_buffer("output_index", torch.argsort(torch.tensor(order, dtype=torch.long)))
        else:
            self.output_index = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple[Tensor, ...]:
        x = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, E)
        bias = mask_bias(attention_mask, x.dtype) if attention_mask is not None else None
        relative = None
        if self.relative_attention_bias is not None:
            rel = self.config.relative_attention
            relative = position_bias(self.relative_attention_bias.weight, x.shape[1], rel["num_buckets"],
                                     rel["max_distance"])  # (1, teacher heads, T, T)
        hidden_states: list[Tensor] = [x]
        for block in self.blocks:
            x = block.enter(x)  # (B, T, h_b)
            for layer in block.layers:
                x = layer(x, bias, attention_mask, relative)
                hidden_states.append(x)
        if self.output_projection is not None:  # hidden_states keep the sublayers' own widths and order
            x = self.output_projection(x)  # (B, T, output), the teacher's dimensions
        elif self.output_index is not None:
            x = x.index_select(-1, self.output_index)  # importance order -> the teacher's order
        if return_dict is False:
            return (x, tuple(hidden_states)) if output_hidden_states else (x,)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden_states) if output_hidden_states else None)
