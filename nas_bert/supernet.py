"""The weight-sharing supernet: one full-width weight per operator type per sublayer position.

A smaller width, inner size or kernel uses the leading slices (the kernel's centre) of that one
weight (HAT, once-for-all). Every size is passed to `forward` explicitly; no layer remembers the
last sub-architecture it ran (HAT's `set_sample_config` pitfall). Each block has linear adapters
from the teacher's width to the block's width and back, so block b can be trained alone to turn
the teacher's state at its start boundary into the teacher's state at its end boundary.

`inherit_teacher` starts those weights from the teacher's own layers (NAS-BERT, AutoTinyBERT and
DynaBERT all start from pretrained weights): at full width the path (attention, feed-forward) x k
of block b is the teacher's layers exactly, and every smaller width is the ETD extraction of the
teacher's most important units, because units are sorted by importance before the copy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_bert.architecture import Architecture, Block, Op
from nas_bert.configuration_nas_bert import NasBertConfig
from nas_bert.errors import NasBertError
from nas_bert.importance import Importance, bert_layers, head_size
from nas_bert.modeling_nas_bert import (
    NasBertModel,
    attention,
    feed_forward,
    mask_bias,
    post_norm,
    sep_conv,
)
from nas_bert.space import SearchSpace
from nas_bert.teacher import Teacher

Tensor = torch.Tensor


class ElasticLinear(nn.Module):
    """A Linear at its largest size; `forward(x, in_dim, out_dim)` uses the leading slice."""

    def __init__(self, in_max: int, out_max: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_max, in_max))
        self.bias = nn.Parameter(torch.zeros(out_max))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default

    def sliced(self, in_dim: int, out_dim: int) -> tuple[Tensor, Tensor]:
        return self.weight[:out_dim, :in_dim], self.bias[:out_dim]

    def forward(self, x: Tensor, in_dim: int, out_dim: int) -> Tensor:
        w, b = self.sliced(in_dim, out_dim)
        return nn.functional.linear(x, w, b)


class ElasticLayerNorm(nn.Module):
    def __init__(self, dim_max: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim_max))
        self.bias = nn.Parameter(torch.zeros(dim_max))

    def sliced(self, dim: int) -> tuple[Tensor, Tensor]:
        return self.weight[:dim], self.bias[:dim]


class ElasticDepthwiseConv(nn.Module):
    """Depthwise 1-D convolution at the largest kernel; a smaller kernel uses the centre taps."""

    def __init__(self, channels_max: int, kernel_max: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels_max, 1, kernel_max))
        self.bias = nn.Parameter(torch.zeros(channels_max))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def sliced(self, channels: int, kernel: int) -> tuple[Tensor, Tensor]:
        start = (self.weight.shape[-1] - kernel) // 2
        return self.weight[:channels, :, start : start + kernel], self.bias[:channels]


class SuperSublayer(nn.Module):
    """Every operator of one sublayer position, each with its own LayerNorm, at the largest width."""

    def __init__(self, space: SearchSpace, eps: float) -> None:
        super().__init__()
        H, eps_ = space.max_hidden, eps
        self.eps = eps_
        if "mha" in space.operators:
            self.query, self.key, self.value, self.attn_out = (ElasticLinear(H, H) for _ in range(4))
            self.ln_mha = ElasticLayerNorm(H)
        if "ffn" in space.operators:
            self.intermediate = ElasticLinear(H, space.max_inner)
            self.ffn_out = ElasticLinear(space.max_inner, H)
            self.ln_ffn = ElasticLayerNorm(H)
        if "sepconv" in space.operators:
            self.depthwise = ElasticDepthwiseConv(H, space.max_kernel)
            self.pointwise = ElasticLinear(H, H)
            self.ln_sepconv = ElasticLayerNorm(H)

    def forward(self, x: Tensor, op: Op, bias: Tensor | None, mask: Tensor | None) -> Tensor:
        """x (B, T, h) with h = the block's hidden size; returns (B, T, h)."""
        h = x.shape[-1]
        if op.kind == "identity":
            return x
        if op.kind == "mha":
            y = attention(x, *self.query.sliced(h, h), *self.key.sliced(h, h), *self.value.sliced(h, h),
                          *self.attn_out.sliced(h, h), op.heads, bias)
            ln = self.ln_mha
        elif op.kind == "ffn":
            y = feed_forward(x, *self.intermediate.sliced(h, op.inner), *self.ffn_out.sliced(op.inner, h))
            ln = self.ln_ffn
        else:
            y = sep_conv(x, *self.depthwise.sliced(h, op.kernel), *self.pointwise.sliced(h, h), mask)
            ln = self.ln_sepconv
        return post_norm(x, y, *ln.sliced(h), self.eps, 0.0, False)

    def extract_into(self, layer: nn.Module, op: Op, h: int) -> None:
        """Copy this sublayer's slice for `op` at width h into a student's NasBertLayer."""
        if op.kind == "mha":
            pairs = [(layer.query, self.query), (layer.key, self.key), (layer.value, self.value), (layer.output, self.attn_out)]
            slices = [src.sliced(h, h) for _, src in pairs]
            dsts = [d for d, _ in pairs]
            ln = self.ln_mha
        elif op.kind == "ffn":
            slices = [self.intermediate.sliced(h, op.inner), self.ffn_out.sliced(op.inner, h)]
            dsts = [layer.intermediate, layer.output]
            ln = self.ln_ffn
        else:
            slices = [self.depthwise.sliced(h, op.kernel), self.pointwise.sliced(h, h)]
            dsts = [layer.depthwise, layer.pointwise]
            ln = self.ln_sepconv
        slices.append(ln.sliced(h))
        dsts.append(layer.LayerNorm)
        for dst, (w, b) in zip(dsts, slices, strict=True):
            _copy(dst.weight, w)
            _copy(dst.bias, b)


class SuperBlock(nn.Module):
    """Adapters (teacher width <-> block width) around the block's sublayer positions."""

    def __init__(self, space: SearchSpace, teacher_width: int, eps: float) -> None:
        super().__init__()
        self.adapter_in = ElasticLinear(teacher_width, space.max_hidden)
        self.sublayers = nn.ModuleList(SuperSublayer(space, eps) for _ in range(space.sublayers_per_block))
        self.adapter_out = ElasticLinear(space.max_hidden, teacher_width)

    def run_ops(self, x: Tensor, block: Block, bias: Tensor | None, mask: Tensor | None) -> Tensor:
        for sub, op in zip(self.sublayers, block.ops, strict=True):
            x = sub(x, op, bias, mask)
        return x


class Supernet(nn.Module):
    """Blocks of shared-weight sublayers. Trained block by block against the teacher."""

    def __init__(self, space: SearchSpace, teacher_width: int, eps: float = 1e-12) -> None:
        super().__init__()
        if space.max_hidden > teacher_width:
            raise NasBertError(f"search space widths up to {space.max_hidden} exceed the teacher's {teacher_width}")
        self.space = space
        self.teacher_width = teacher_width
        self.eps = eps
        self.blocks = nn.ModuleList(SuperBlock(space, teacher_width, eps) for _ in range(space.blocks))

    def forward(self, inputs: list[Tensor], jobs: list[tuple[int, Block]], attention_mask: Tensor | None = None) -> list[Tensor]:
        """Run several (block index, block sub-architecture) jobs, each on its block's input state.

        One call per step so that DistributedDataParallel sees a single forward per backward.
        """
        return [self.forward_block(b, inputs[b], block, attention_mask) for b, block in jobs]

    def forward_block(self, b: int, hidden: Tensor, block: Block, attention_mask: Tensor | None = None) -> Tensor:
        """Block b on a teacher-width state: (B, T, teacher width) -> (B, T, teacher width)."""
        sb, T = self.blocks[b], self.teacher_width
        bias = mask_bias(attention_mask, hidden.dtype) if attention_mask is not None else None
        x = sb.adapter_in(hidden, T, block.hidden)  # (B, T, h)
        x = sb.run_ops(x, block, bias, attention_mask)
        return sb.adapter_out(x, block.hidden, T)

    def forward_chain(self, embedded: Tensor, arch: Architecture, attention_mask: Tensor | None = None) -> Tensor:
        """A whole student on the supernet: the teacher's embedding output -> its last block's state.

        Between blocks, adapter_out of one and adapter_in of the next compose into one linear map,
        which is exactly the projection an extracted student keeps.
        """
        bias = mask_bias(attention_mask, embedded.dtype) if attention_mask is not None else None
        x, prev = embedded, None
        for sb, block in zip(self.blocks, arch.blocks, strict=True):
            w, bvec = self.projection(sb, block.hidden, prev)
            x = nn.functional.linear(x, w, bvec)  # (B, T, h_b)
            x = sb.run_ops(x, block, bias, attention_mask)
            prev = (sb, block.hidden)
        return x

    def forward_student(self, embedded: Tensor, arch: Architecture, attention_mask: Tensor | None = None) -> Tensor:
        """What the extracted student returns: the chain, then its output projection (the last adapter)."""
        x = self.forward_chain(embedded, arch, attention_mask)
        if not arch.output:
            return x
        w, b = self.output_adapter(len(arch.blocks) - 1, arch.blocks[-1].hidden)
        return nn.functional.linear(x, w, b)

    def output_adapter(self, b: int, width: int) -> tuple[Tensor, Tensor]:
        """Block b's map from its width back to the teacher's (used against the teacher's states)."""
        return self.blocks[b].adapter_out.sliced(width, self.teacher_width)

    def projection(self, sb: SuperBlock, out_width: int, prev: tuple[SuperBlock, int] | None) -> tuple[Tensor, Tensor]:
        """Weight and bias mapping the previous block's output (or the embeddings) into `sb`."""
        w_in, b_in = sb.adapter_in.sliced(self.teacher_width, out_width)
        if prev is None:
            return w_in, b_in
        w_out, b_out = prev[0].adapter_out.sliced(prev[1], self.teacher_width)
        # in(out(x)) = W_in (W_out x + b_out) + b_in
        return w_in @ w_out, w_in @ b_out + b_in

    @torch.no_grad()
    def extract(self, arch: Architecture, teacher_embeddings: nn.Module | None = None) -> NasBertModel:
        """A standalone student holding copies of the supernet slices for `arch`."""
        arch.validate(self.space)
        if arch.output not in (0, self.teacher_width):
            raise NasBertError(f"architecture output width {arch.output}: a supernet student returns to the teacher's "
                               f"width {self.teacher_width} (or has no output projection: 0)")
        student = NasBertModel(NasBertConfig(architecture=arch.to_dict(), layer_norm_eps=self.eps))
        if teacher_embeddings is not None:
            copy_embeddings(teacher_embeddings, student)
        prev: tuple[SuperBlock, int] | None = None
        for sb, block, sblock in zip(self.blocks, arch.blocks, student.blocks, strict=True):
            w, b = self.projection(sb, block.hidden, prev)
            _copy(sblock.projection.weight, w)
            _copy(sblock.projection.bias, b)
            layers = iter(sblock.layers)
            for sub, op in zip(sb.sublayers, block.ops, strict=True):
                if op.kind != "identity":
                    sub.extract_into(next(layers), op, block.hidden)
            prev = (sb, block.hidden)
        if arch.output:  # the last block's adapter back to the teacher: exactly what its block score used
            w, b = self.output_adapter(len(arch.blocks) - 1, arch.blocks[-1].hidden)
            _copy(student.output_projection.weight, w)
            _copy(student.output_projection.bias, b)
        return student


def teacher_layer(space: SearchSpace, num_layers: int, b: int, j: int) -> int:
    """The teacher layer whose attention and feed-forward weights start sublayer position j of block b.

    Block b mimics teacher layers [b k, (b + 1) k), k = layers / blocks; positions go in
    (attention, feed-forward) pairs, and pair p takes the layer at the same relative depth
    (every other layer when the block has half as many pairs as teacher layers).
    """
    k = num_layers // space.blocks
    return b * k + min(k - 1, (j // 2) * 2 * k // space.sublayers_per_block)


def _order(scores: Tensor | None, n: int) -> Tensor:
    """Units by decreasing importance (or as they are), so that leading slices keep the best."""
    return torch.arange(n) if scores is None else torch.argsort(scores.float().cpu(), descending=True, stable=True)


@torch.no_grad()
def inherit_teacher(net: Supernet, teacher: Teacher, importance: Importance | None = None) -> None:
    """Start the supernet's attention, feed-forward and LayerNorm weights from the teacher's layers.

    Hidden dimensions, heads and feed-forward neurons are permuted by decreasing `importance` (or kept
    in order without it); the adapters are the matching permutation and its inverse, so at full width
    every block computes exactly the teacher's layers, and a narrower slice keeps the most important
    units (ETD extraction, DynaBERT's network rewiring). Separable convolutions have no teacher
    counterpart and keep their random start; feed-forward neurons beyond the teacher's start with a
    zero output so they change nothing until trained.
    """
    layers = bert_layers(teacher)
    space, T, H = net.space, net.teacher_width, net.space.max_hidden
    hs = head_size(teacher)
    dims = _order(importance.hidden if importance else None, T)[:H]  # supernet dim k = teacher dim dims[k]
    for b, sb in enumerate(net.blocks):
        sb.adapter_in.weight.zero_()
        sb.adapter_in.weight[torch.arange(H), dims] = 1.0
        sb.adapter_in.bias.zero_()
        sb.adapter_out.weight.zero_()
        sb.adapter_out.weight[dims, torch.arange(H)] = 1.0
        sb.adapter_out.bias.zero_()
        for j, sub in enumerate(sb.sublayers):
            i = teacher_layer(space, teacher.num_layers, b, j)
            t = layers[i]
            if "mha" in space.operators:
                heads = _order(importance.heads[i] if importance else None, T // hs)
                rows = (heads[:, None] * hs + torch.arange(hs)).reshape(-1)[:H]  # the heads' dimensions, best first
                copy_attention((sub.query, sub.key, sub.value, sub.attn_out), sub.ln_mha, t, rows, dims)
            if "ffn" in space.operators:
                inner = t.intermediate.dense.out_features
                n = min(inner, space.max_inner)
                neurons = _order(importance.neurons[i] if importance else None, inner)[:n]
                sub.ffn_out.weight.zero_()
                copy_ffn((sub.intermediate.weight[:n], sub.intermediate.bias[:n], sub.ffn_out.weight[:, :n],
                          sub.ffn_out.bias), sub.ln_ffn, t, neurons, dims)


def copy_norm(dst: nn.Module, src: nn.LayerNorm, dims: Tensor) -> None:
    """A LayerNorm's weight and bias at the teacher dimensions `dims` (in that order)."""
    dst.weight.copy_(src.weight[dims])
    dst.bias.copy_(src.bias[dims])


def copy_attention(dst: tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear], norm: nn.Module, t: nn.Module,
                   rows: Tensor, dims: Tensor) -> None:
    """Teacher layer `t`'s attention into (query, key, value, output) and its LayerNorm: heads'
    dimensions `rows`, hidden dimensions `dims` (both in the order given)."""
    q, k, v, out = dst
    for d, src in ((q, t.attention.self.query), (k, t.attention.self.key), (v, t.attention.self.value)):
        d.weight.copy_(src.weight[rows][:, dims])
        d.bias.copy_(src.bias[rows])
    out.weight.copy_(t.attention.output.dense.weight[dims][:, rows])
    out.bias.copy_(t.attention.output.dense.bias[dims])
    copy_norm(norm, t.attention.output.LayerNorm, dims)


def copy_ffn(dst: tuple[Tensor, Tensor, Tensor, Tensor], norm: nn.Module, t: nn.Module, neurons: Tensor,
             dims: Tensor) -> None:
    """Teacher layer `t`'s feed-forward into (in weight, in bias, out weight, out bias), tensors or views
    of them, and its LayerNorm: neurons `neurons`, hidden dimensions `dims`."""
    w_in, b_in, w_out, b_out = dst
    w_in.copy_(t.intermediate.dense.weight[neurons][:, dims])
    b_in.copy_(t.intermediate.dense.bias[neurons])
    w_out.copy_(t.output.dense.weight[dims][:, neurons])
    b_out.copy_(t.output.dense.bias[dims])
    copy_norm(norm, t.output.LayerNorm, dims)


def copy_embeddings(teacher_embeddings: nn.Module, student: NasBertModel) -> None:
    """ETD: the student starts from the teacher's embedding tables and LayerNorm."""
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        src, dst = getattr(teacher_embeddings, name), getattr(student.embeddings, name)
        for pname, p in dst.named_parameters():
            _copy(p, getattr(src, pname))


def _copy(dst: Tensor, src: Tensor) -> None:
    if dst.shape != src.shape:
        raise NasBertError(f"shape mismatch while extracting: {tuple(src.shape)} into {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)
