"""The weight-sharing supernet: one full-width weight per operator type per sublayer position.

A smaller width, inner size or kernel uses the leading slices (the kernel's centre) of that one
weight (HAT, once-for-all). Every size is passed to `forward` explicitly; no layer remembers the
last sub-architecture it ran (HAT's `set_sample_config` pitfall). Block b of width h reads the
leading h dimensions (importance order) of the teacher's state at its start boundary and is trained
to write the leading h of the state at its end boundary; the dimensions it drops are predicted
linearly from those it keeps (a fixed ridge regression on the teacher's states). The same maps join
blocks in a chained student: nothing between equal widths, a slice into a narrower block, a linear
prediction of the missing dimensions into a wider one.

`inherit_teacher` starts the weights from the teacher's own layers (NAS-BERT, AutoTinyBERT and
DynaBERT all start from pretrained weights): at full width the path (attention, feed-forward) x k
of block b is the teacher's layers exactly, and every smaller width is the ETD extraction of the
teacher's most important units, because units are sorted by importance before the copy. With
`frozen` slots the teacher's full-width operators are kept as they are while the shared weights
train, so a truncated teacher inside the space stays the teacher exactly. The teacher's weights are read through its
family's adapter (`nas_bert.teacher.families`): BERT, RoBERTa, ELECTRA, DistilBERT and MPNet name them differently.
With a relative position bias (MPNet) the supernet holds the teacher's table, and each attention position the
order of the teacher's heads it holds (`head_order`), so that a slice of heads takes its heads' columns of the bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas_bert.errors import NasBertError
from nas_bert.model import (
    NasBertConfig,
    NasBertModel,
    attention,
    feed_forward,
    mask_bias,
    post_norm,
    resize,
    sep_conv,
)
from nas_bert.model.modeling_nas_bert import head_bias, position_bias
from nas_bert.space import Architecture, Block, Op, SearchSpace
from nas_bert.teacher import Importance, Teacher, TeacherEmbeddings, TeacherLayer, head_size, teacher_layers

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


class FrozenOps(nn.Module):
    """The teacher's own attention and feed-forward of one sublayer position at full width, kept as
    they are (buffers, never trained): a path made of them is the teacher's layers exactly."""

    def __init__(self, width: int, inner: int, mha: bool, ffn: bool) -> None:
        super().__init__()
        self.mha, self.ffn = mha, ffn
        if mha:
            for name in ("query", "key", "value", "attn_out"):
                self.register_buffer(f"{name}_w", torch.zeros(width, width))
                self.register_buffer(f"{name}_b", torch.zeros(width))
            self.register_buffer("ln_mha_w", torch.ones(width))
            self.register_buffer("ln_mha_b", torch.zeros(width))
        if ffn:
            self.register_buffer("intermediate_w", torch.zeros(inner, width))
            self.register_buffer("intermediate_b", torch.zeros(inner))
            self.register_buffer("ffn_out_w", torch.zeros(width, inner))
            self.register_buffer("ffn_out_b", torch.zeros(width))
            self.register_buffer("ln_ffn_w", torch.ones(width))
            self.register_buffer("ln_ffn_b", torch.zeros(width))

    def pairs(self, kind: str) -> list[tuple[Tensor, Tensor]]:
        """(weight, bias) of each linear map, then the LayerNorm's, in SuperSublayer.slices' order."""
        names = ("query", "key", "value", "attn_out", "ln_mha") if kind == "mha" else ("intermediate", "ffn_out", "ln_ffn")
        return [(getattr(self, f"{n}_w"), getattr(self, f"{n}_b")) for n in names]


class SuperSublayer(nn.Module):
    """Every operator of one sublayer position, each with its own LayerNorm, at the largest width;
    optionally the teacher's own full-width attention and feed-forward, frozen (`frozen`)."""

    def __init__(self, space: SearchSpace, eps: float, frozen: dict[str, int] | None = None, heads: int = 0) -> None:
        super().__init__()
        H, eps_ = space.max_hidden, eps
        self.eps = eps_
        if "mha" in space.operators:
            self.query, self.key, self.value, self.attn_out = (ElasticLinear(H, H) for _ in range(4))
            self.ln_mha = ElasticLayerNorm(H)
        if "mha" in space.operators and heads:
            # a relative position bias over the teacher's `heads` heads: the teacher's head of each slice of heads
            self.register_buffer("head_order", torch.arange(heads))
        else:
            self.head_order: Tensor | None = None
        if "ffn" in space.operators:
            self.intermediate = ElasticLinear(H, space.max_inner)
            self.ffn_out = ElasticLinear(space.max_inner, H)
            self.ln_ffn = ElasticLayerNorm(H)
        if "sepconv" in space.operators:
            self.depthwise = ElasticDepthwiseConv(H, space.max_kernel)
            self.pointwise = ElasticLinear(H, H)
            self.ln_sepconv = ElasticLayerNorm(H)
        self.frozen_width = H if frozen else 0
        self.frozen_heads = frozen["heads"] if frozen else 0
        self.frozen_inner = frozen["inner"] if frozen else 0
        self.frozen = FrozenOps(H, self.frozen_inner, "mha" in space.operators,
                                "ffn" in space.operators) if frozen else None

    def uses_frozen(self, op: Op, h: int) -> bool:
        """Whether `op` at width h is the teacher's own (frozen) operator of this position."""
        if self.frozen is None or h != self.frozen_width:
            return False
        return ((op.kind == "mha" and self.frozen.mha and op.heads == self.frozen_heads)
                or (op.kind == "ffn" and self.frozen.ffn and op.inner == self.frozen_inner))

    def slices(self, op: Op, h: int) -> list[tuple[Tensor, Tensor]]:
        """(weight, bias) of each of the operator's parts at width h, its LayerNorm last."""
        if self.uses_frozen(op, h):
            return self.frozen.pairs(op.kind)  # type: ignore[union-attr]
        if op.kind == "mha":  # the leading heads (importance order) at the leading h dimensions
            a = op.attention_width(h)
            return [self.query.sliced(h, a), self.key.sliced(h, a), self.value.sliced(h, a), self.attn_out.sliced(a, h),
                    self.ln_mha.sliced(h)]
        if op.kind == "ffn":
            return [self.intermediate.sliced(h, op.inner), self.ffn_out.sliced(op.inner, h), self.ln_ffn.sliced(h)]
        return [self.depthwise.sliced(h, op.kernel), self.pointwise.sliced(h, h), self.ln_sepconv.sliced(h)]

    def trainable(self, op: Op, h: int) -> bool:
        return op.kind != "identity" and not self.uses_frozen(op, h)

    def relative_heads(self, op: Op) -> Tensor | None:
        """The teacher's heads (columns of the relative bias table) an attention `op` holds, in its order."""
        return None if self.head_order is None else self.head_order[: op.heads]

    def forward(self, x: Tensor, op: Op, bias: Tensor | None, mask: Tensor | None,
                relative: Tensor | None = None) -> Tensor:
        """x (B, T, h) with h = the block's hidden size; returns (B, T, h). `relative`: the relative position bias
        (1, teacher heads, T, T), if the teacher has one."""
        if op.kind == "identity":
            return x
        *parts, ln = self.slices(op, x.shape[-1])
        flat = [t for pair in parts for t in pair]
        if op.kind == "mha":
            y = attention(x, *flat, op.heads, head_bias(bias, relative, self.relative_heads(op)))
        elif op.kind == "ffn":
            y = feed_forward(x, *flat)
        else:
            y = sep_conv(x, *flat, mask)
        return post_norm(x, y, *ln, self.eps, 0.0, False)

    def extract_into(self, layer: nn.Module, op: Op, h: int) -> None:
        """Copy this sublayer's slice for `op` at width h into a student's NasBertLayer."""
        names = {"mha": ("query", "key", "value", "output"), "ffn": ("intermediate", "output"),
                 "sepconv": ("depthwise", "pointwise")}[op.kind]
        for dst, (w, b) in zip([*(getattr(layer, n) for n in names), layer.LayerNorm], self.slices(op, h), strict=True):
            _copy(dst.weight, w)
            _copy(dst.bias, b)
        if op.kind == "mha" and self.head_order is not None:
            _copy(layer.relative_heads, self.relative_heads(op))


class SuperBlock(nn.Module):
    """The block's sublayer positions (its width comes and goes by `resize`, see the Supernet)."""

    def __init__(self, space: SearchSpace, eps: float, frozen: dict[str, int] | None = None, heads: int = 0) -> None:
        super().__init__()
        self.sublayers = nn.ModuleList(SuperSublayer(space, eps, frozen, heads) for _ in range(space.sublayers_per_block))

    def run_ops(self, x: Tensor, block: Block, bias: Tensor | None, mask: Tensor | None,
                relative: Tensor | None = None) -> Tensor:
        for sub, op in zip(self.sublayers, block.ops, strict=True):
            x = sub(x, op, bias, mask, relative)
        return x


class Supernet(nn.Module):
    """Blocks of shared-weight sublayers. Trained block by block against the teacher.

    The supernet works in the teacher's hidden dimensions reordered by importance (`order`: dimension
    k is the teacher's order[k]). A block of width h reads the leading h dimensions of the teacher's
    state at its start boundary and writes the leading h of the state at its end boundary; the rest
    of that state is predicted linearly from them (`recon`, a ridge regression fitted on the teacher's
    own states, fixed), which is also how a wider next block, or the output, gets its extra
    dimensions. So the block-wise training and a chained student see the same maps: equal widths
    pass the state on as it is, a narrower block slices, only a wider one pays for a linear map.
    """

    def __init__(self, space: SearchSpace, teacher_width: int, eps: float = 1e-12,
                 frozen: dict[str, int] | None = None, relative: dict[str, int] | None = None) -> None:
        super().__init__()
        if space.max_hidden > teacher_width:
            raise NasBertError(f"search space widths up to {space.max_hidden} exceed the teacher's {teacher_width}")
        self.space = space
        self.teacher_width = teacher_width
        self.eps = eps
        # the teacher's full-width operators, frozen, only where they fit the space's widest sublayer
        self.frozen_spec = frozen if frozen and space.max_hidden == teacher_width else None
        # a relative position bias (MPNet, `RelativeAttention.spec()`): one table shared by every attention, as the teacher's
        self.relative = dict(relative) if relative else None
        heads = self.relative["heads"] if self.relative else 0
        if heads and space.head_size * heads != teacher_width:
            raise NasBertError(f"search space '{space.name}' has heads of {space.head_size} dimensions; the teacher's relative "
                               f"position bias is per head of {teacher_width // heads}: use head_size {teacher_width // heads}")
        self.blocks = nn.ModuleList(SuperBlock(space, eps, self.frozen_spec, heads) for _ in range(space.blocks))
        if self.relative:
            self.relative_bias = nn.Parameter(torch.empty(self.relative["rows"], heads).normal_(0.0, 0.02))
        self.register_buffer("order", torch.arange(teacher_width))
        T = teacher_width
        for b in range(1, space.blocks + 1):  # boundary b: the end of block b - 1
            for h in space.hidden_sizes:
                if h < T:
                    self.register_buffer(f"recon_w_{b}_{h}", torch.zeros(T - h, h))
                    self.register_buffer(f"recon_b_{b}_{h}", torch.zeros(T - h))

    # -- coordinates ------------------------------------------------------------------------------
    def to_net(self, state: Tensor) -> Tensor:
        """A teacher state (B, T, teacher width) in the supernet's (importance) order."""
        return state.index_select(-1, self.order)

    def to_teacher(self, x: Tensor) -> Tensor:
        return x.index_select(-1, torch.argsort(self.order))

    def recon(self, boundary: int, h: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
        """The linear prediction of dimensions [h:] of the state at `boundary` from its leading h."""
        if h >= self.teacher_width:
            return None, None
        return getattr(self, f"recon_w_{boundary}_{h}"), getattr(self, f"recon_b_{boundary}_{h}")

    def position_bias(self, T: int) -> Tensor | None:
        """The relative position bias for sequences of T tokens (1, teacher heads, T, T), None without one."""
        if self.relative is None:
            return None
        return position_bias(self.relative_bias, T, self.relative["num_buckets"], self.relative["max_distance"])

    def complete(self, boundary: int, y: Tensor) -> Tensor:
        """(B, T, h) leading dimensions -> (B, T, teacher width) with the rest predicted (supernet order)."""
        return resize(y, self.teacher_width, *self.recon(boundary, y.shape[-1]))

    # -- forward passes ---------------------------------------------------------------------------
    def forward(self, inputs: list[Tensor], jobs: list[tuple[int, Block]], attention_mask: Tensor | None = None) -> list[Tensor]:
        """Run several (block index, block sub-architecture) jobs, each on its block's input state.

        One call per step so that DistributedDataParallel sees a single forward per backward.
        """
        return [self.forward_block(b, inputs[b], block, attention_mask) for b, block in jobs]

    def forward_block(self, b: int, hidden: Tensor, block: Block, attention_mask: Tensor | None = None) -> Tensor:
        """Block b on a teacher state: (B, T, teacher width) -> (B, T, teacher width), the teacher's order."""
        bias = mask_bias(attention_mask, hidden.dtype) if attention_mask is not None else None
        x = self.to_net(hidden)[..., : block.hidden]  # (B, T, h)
        x = self.blocks[b].run_ops(x, block, bias, attention_mask, self.position_bias(x.shape[1]))
        return self.to_teacher(self.complete(b + 1, x))

    def forward_chain(self, embedded: Tensor, arch: Architecture, attention_mask: Tensor | None = None) -> Tensor:
        """A whole student on the supernet: the teacher's embedding output -> its last block's state
        (supernet order). Block b enters through `resize` with boundary b's prediction: exactly what
        an extracted student computes."""
        bias = mask_bias(attention_mask, embedded.dtype) if attention_mask is not None else None
        relative = self.position_bias(embedded.shape[1])  # computed once, as the teacher does
        x = self.to_net(embedded)
        for b, (sb, block) in enumerate(zip(self.blocks, arch.blocks, strict=True)):
            x = resize(x, block.hidden, *self.recon(b, x.shape[-1]))  # boundary 0: the embeddings, full width
            x = sb.run_ops(x, block, bias, attention_mask, relative)
        return x

    def forward_student(self, embedded: Tensor, arch: Architecture, attention_mask: Tensor | None = None) -> Tensor:
        """What the extracted student returns: the chain, then the teacher's dimensions (its output)."""
        x = self.forward_chain(embedded, arch, attention_mask)
        return self.to_teacher(self.complete(len(arch.blocks), x)) if arch.output else x

    def trainable(self, b: int, block: Block) -> bool:
        """Whether a path through block b has weights to train (the teacher's own layers do not)."""
        return any(sub.trainable(op, block.hidden) for sub, op in zip(self.blocks[b].sublayers, block.ops, strict=True))

    # -- extraction -------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: Architecture, teacher_embeddings: nn.Module | TeacherEmbeddings | None = None) -> NasBertModel:
        """A standalone student holding copies of the supernet slices for `arch`, on the teacher's embeddings
        (`teacher.encoder.embeddings` of any supported family: its tables and how it numbers positions)."""
        arch.validate(self.space)
        if arch.output not in (0, self.teacher_width):
            raise NasBertError(f"architecture output width {arch.output}: a supernet student returns to the teacher's "
                               f"width {self.teacher_width} (or has no output projection: 0)")
        order = self.order.cpu()
        # a student all at full width needs no importance order: it is folded back into its weights (`unpermute`),
        # so it pays no reordering at run time
        folded = not arch.reorders() and arch.output and all(b.hidden == self.teacher_width for b in arch.blocks)
        emb = None if teacher_embeddings is None else _embeddings(teacher_embeddings)
        student = NasBertModel(NasBertConfig(architecture=arch.to_dict(), layer_norm_eps=self.eps,
                                             dim_order=None if folded else order.tolist(), relative_attention=self.relative,
                                             **(emb.student_settings() if emb is not None else {})))
        if emb is not None:
            copy_embeddings(emb, student, None if folded else order)
        if self.relative is not None:
            _copy(student.relative_attention_bias.weight, self.relative_bias)
        prev = self.teacher_width
        for b, (sb, block, sblock) in enumerate(zip(self.blocks, arch.blocks, student.blocks, strict=True)):
            if sblock.grow is not None:  # a wider block: its extra dimensions predicted from boundary b
                w, bias = self.recon(b, prev)
                _copy(sblock.grow.weight, w[: block.hidden - prev])
                _copy(sblock.grow.bias, bias[: block.hidden - prev])
            layers = iter(sblock.layers)
            for sub, op in zip(sb.sublayers, block.ops, strict=True):
                if op.kind != "identity":
                    sub.extract_into(next(layers), op, block.hidden)
            prev = block.hidden
        if student.output_projection is not None:  # the last boundary's prediction, in the teacher's order
            eye = torch.eye(prev, device=order.device)
            w, bias = self.recon(len(arch.blocks), prev)
            full_w = torch.cat([eye, w.cpu()], 0)  # (teacher width, prev), supernet order
            full_b = torch.cat([torch.zeros(prev), bias.cpu()])
            inv = torch.argsort(order)
            _copy(student.output_projection.weight, full_w[inv])
            _copy(student.output_projection.bias, full_b[inv])
        if folded:
            unpermute(student, torch.argsort(order))
        return student


@torch.no_grad()
def unpermute(student: NasBertModel, inv: Tensor) -> None:
    """Put a full-width student's hidden dimensions back in the teacher's order: every weight's hidden rows and
    columns taken at `inv` (the inverse of the importance order); heads and neurons stay as they are."""
    def rows(m: nn.Module) -> None:
        m.weight.copy_(m.weight[inv])
        m.bias.copy_(m.bias[inv])

    for block in student.blocks:
        for layer in block.layers:
            if layer.kind == "mha":
                for lin in (layer.query, layer.key, layer.value):
                    lin.weight.copy_(lin.weight[:, inv])
                rows(layer.output)
            elif layer.kind == "ffn":
                layer.intermediate.weight.copy_(layer.intermediate.weight[:, inv])
                rows(layer.output)
            else:
                rows(layer.depthwise)
                layer.pointwise.weight.copy_(layer.pointwise.weight[inv][:, inv])
                layer.pointwise.bias.copy_(layer.pointwise.bias[inv])
            rows(layer.LayerNorm)


def teacher_layer(space: SearchSpace, num_layers: int, b: int, j: int) -> int:
    """The teacher layer whose attention and feed-forward weights start sublayer position j of block b.

    Block b mimics teacher layers [b k, (b + 1) k), k = layers / blocks; positions go in
    (attention, feed-forward) pairs, and pair p takes the layer at the same relative depth
    (every other layer when the block has half as many pairs as teacher layers).
    """
    if space.layer_slots:  # one block per teacher layer
        return b
    k = num_layers // space.blocks
    return b * k + min(k - 1, (j // 2) * 2 * k // space.sublayers_per_block)


def importance_order(scores: Tensor | None, n: int) -> Tensor:
    """Units by decreasing importance (or as they are), so that leading slices keep the best."""
    return torch.arange(n) if scores is None else torch.argsort(scores.float().cpu(), descending=True, stable=True)


@torch.no_grad()
def inherit_teacher(net: Supernet, teacher: Teacher, importance: Importance | None = None) -> None:
    """Start the supernet's attention, feed-forward and LayerNorm weights from the teacher's layers.

    Hidden dimensions, heads and feed-forward neurons are ordered by decreasing `importance` (or kept
    in order without it), so at full width every block computes exactly the teacher's layers, and a
    narrower slice keeps the most important units (ETD extraction, DynaBERT's network rewiring). With
    frozen slots (`Supernet(frozen=...)`) the full-width copies stay as they are while the shared
    weights train. Separable convolutions have no teacher counterpart and keep their random start;
    feed-forward neurons beyond the teacher's start with a zero output so they change nothing until trained.
    """
    layers = teacher_layers(teacher)
    space, T, H = net.space, net.teacher_width, net.space.max_hidden
    hs = head_size(teacher)
    order = importance_order(importance.hidden if importance else None, T)  # supernet dim k = teacher dim order[k]
    net.order.copy_(order.to(net.order.device))
    dims = order[:H]
    relative = teacher.family.relative_attention(teacher.encoder)
    if (relative.spec() if relative else None) != net.relative:
        raise NasBertError(f"supernet built for relative position bias {net.relative}, teacher has "
                           f"{relative.spec() if relative else None}; build it with the teacher's")
    if relative is not None:
        net.relative_bias.copy_(relative.table.weight)
    for b, sb in enumerate(net.blocks):
        for j, sub in enumerate(sb.sublayers):
            i = teacher_layer(space, teacher.num_layers, b, j)
            t = layers[i]
            if "mha" in space.operators:
                heads = importance_order(importance.heads[i] if importance else None, T // hs)
                rows = (heads[:, None] * hs + torch.arange(hs)).reshape(-1)  # the heads' dimensions, best first
                copy_attention((sub.query, sub.key, sub.value, sub.attn_out), sub.ln_mha, t, rows[:H], dims)
                if sub.head_order is not None:
                    sub.head_order.copy_(heads)
            if "ffn" in space.operators:
                inner = t.ffn_in.out_features
                n = min(inner, space.max_inner)
                neurons = importance_order(importance.neurons[i] if importance else None, inner)
                sub.ffn_out.weight.zero_()
                copy_ffn((sub.intermediate.weight[:n], sub.intermediate.bias[:n], sub.ffn_out.weight[:, :n],
                          sub.ffn_out.bias), sub.ln_ffn, t, neurons[:n], dims)
            if sub.frozen is not None:  # the teacher's layer as it is (all heads and neurons, full width)
                f = sub.frozen
                if f.mha:
                    copy_attention(_pairs(f, ("query", "key", "value", "attn_out")), _Pair(f, "ln_mha"), t, rows, order)
                if f.ffn:
                    copy_ffn((f.intermediate_w, f.intermediate_b, f.ffn_out_w, f.ffn_out_b), _Pair(f, "ln_ffn"), t,
                             neurons, order)


class _Pair:
    """A (weight, bias) pair of FrozenOps buffers seen as a module with .weight and .bias."""

    def __init__(self, ops: FrozenOps, name: str) -> None:
        self.weight, self.bias = getattr(ops, f"{name}_w"), getattr(ops, f"{name}_b")


def _pairs(ops: FrozenOps, names: tuple[str, ...]) -> tuple[_Pair, ...]:
    return tuple(_Pair(ops, n) for n in names)


@torch.no_grad()
def fit_reconstruction(net: Supernet, states: list[Tensor], masks: list[Tensor], ridge: float = 1e-3) -> None:
    """Fit each boundary's prediction of the dimensions a width h drops from the h it keeps.

    `states[k]` holds the teacher's boundary states of batch k (a list of blocks + 1 tensors (B, T, H));
    a ridge regression over real tokens per (boundary, width), in the supernet's order.
    """
    for b in range(1, net.space.blocks + 1):
        x = torch.cat([net.to_net(s[b])[m.bool()] for s, m in zip(states, masks, strict=True)])  # (tokens, H)
        for h in net.space.hidden_sizes:
            if h < net.teacher_width:
                w, bias = net.recon(b, h)
                fit_w, fit_b = ridge_completion(x, h, ridge)
                w.copy_(fit_w)
                bias.copy_(fit_b)


@torch.no_grad()
def ridge_completion(x: Tensor, h: int, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """The ridge regression of columns [h:] of x (tokens, H) on its leading h: weight (H - h, h), bias (H - h,),
    the penalty `ridge` times the mean variance of the leading columns."""
    x64 = x.double()
    mu = x64.mean(0)
    a, y = (x64 - mu)[:, :h], (x64 - mu)[:, h:]
    gram = a.T @ a
    lam = ridge * float(gram.diagonal().mean()) + 1e-8
    coef = torch.linalg.solve(gram + lam * torch.eye(h, dtype=gram.dtype, device=gram.device), a.T @ y)  # (h, H - h)
    return coef.T.to(x.dtype), (mu[h:] - mu[:h] @ coef).to(x.dtype)


def copy_norm(dst: nn.Module, src: nn.Module, dims: Tensor) -> None:
    """A LayerNorm's weight and bias at the teacher dimensions `dims` (in that order)."""
    dst.weight.copy_(src.weight[dims])
    dst.bias.copy_(src.bias[dims])


def copy_attention(dst: tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear], norm: nn.Module, t: TeacherLayer,
                   rows: Tensor, dims: Tensor) -> None:
    """Teacher layer `t`'s attention into (query, key, value, output) and its LayerNorm: heads'
    dimensions `rows`, hidden dimensions `dims` (both in the order given)."""
    q, k, v, out = dst
    for d, src in ((q, t.query), (k, t.key), (v, t.value)):
        d.weight.copy_(src.weight[rows][:, dims])
        d.bias.copy_(src.bias[rows])
    out.weight.copy_(t.attn_out.weight[dims][:, rows])
    out.bias.copy_(t.attn_out.bias[dims])
    copy_norm(norm, t.attn_norm, dims)


def copy_ffn(dst: tuple[Tensor, Tensor, Tensor, Tensor], norm: nn.Module, t: TeacherLayer, neurons: Tensor,
             dims: Tensor) -> None:
    """Teacher layer `t`'s feed-forward into (in weight, in bias, out weight, out bias), tensors or views
    of them, and its LayerNorm: neurons `neurons`, hidden dimensions `dims`."""
    w_in, b_in, w_out, b_out = dst
    w_in.copy_(t.ffn_in.weight[neurons][:, dims])
    b_in.copy_(t.ffn_in.bias[neurons])
    w_out.copy_(t.ffn_out.weight[dims][:, neurons])
    b_out.copy_(t.ffn_out.bias[dims])
    copy_norm(norm, t.ffn_norm, dims)


def _embeddings(teacher_embeddings: nn.Module | TeacherEmbeddings) -> TeacherEmbeddings:
    return teacher_embeddings if isinstance(teacher_embeddings, TeacherEmbeddings) else TeacherEmbeddings.of(teacher_embeddings)


def copy_embeddings(teacher_embeddings: nn.Module | TeacherEmbeddings, student: NasBertModel,
                    order: Tensor | None = None) -> None:
    """ETD: the student starts from the teacher's embedding tables and LayerNorm, their dimensions in
    `order` (the student's importance order; None keeps the teacher's). A family without token types
    (DistilBERT, MPNet) leaves the student's one-row token type table at zero: it adds nothing."""
    emb = _embeddings(teacher_embeddings)
    dst = student.embeddings
    pairs = [(dst.word_embeddings, emb.word), (dst.position_embeddings, emb.position), (dst.LayerNorm, emb.norm)]
    if emb.token_type is not None:
        pairs.append((dst.token_type_embeddings, emb.token_type))
    else:
        _copy(dst.token_type_embeddings.weight, torch.zeros_like(dst.token_type_embeddings.weight))
    for d, src in pairs:
        for pname, p in d.named_parameters():
            value = getattr(src, pname)
            if order is not None:
                value = value.index_select(-1, order.to(value.device))
            _copy(p, value)


def _copy(dst: Tensor, src: Tensor) -> None:
    if dst.shape != src.shape:
        raise NasBertError(f"shape mismatch while extracting: {tuple(src.shape)} into {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)
