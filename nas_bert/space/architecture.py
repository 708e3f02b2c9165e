"""`Architecture`: the one object that describes a student, from search to export.

A student is the teacher's embeddings, then blocks; each block has one hidden size and a list of
sublayer operators. A block takes the leading dimensions of its input when it is narrower, the input
as it is at equal width, and only a wider block pays for a linear map (`transition_params`). The
output returns to the teacher's width (`output`): a linear map from a narrower last block, a
reordering from a full-width one; a student's last_hidden_state lives in the teacher's space (a
drop-in replacement: same size, same geometry it was distilled to).
Its canonical JSON is the key everywhere (database rows, checkpoints, exported models).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from nas_bert.errors import NasBertError
from nas_bert.space.search_space import SearchSpace
from nas_bert.store import sha256_hex

OP_KINDS = ("mha", "ffn", "sepconv", "identity")


@dataclass(frozen=True, order=True)
class Op:
    """One sublayer operator with its size parameter (heads, inner size or kernel)."""

    kind: str
    heads: int = 0
    inner: int = 0
    kernel: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise NasBertError(f"unknown operator '{self.kind}'; expected one of {list(OP_KINDS)}")
        need = {"mha": "heads", "ffn": "inner", "sepconv": "kernel"}.get(self.kind)
        for field in ("heads", "inner", "kernel"):
            value = getattr(self, field)
            if field == need and value < 1:
                raise NasBertError(f"operator '{self.kind}' needs a positive '{field}'")
            # attention may name its width (heads x head size) where it differs from the block's
            if field != need and value and not (self.kind == "mha" and field == "inner"):
                raise NasBertError(f"operator '{self.kind}' takes no '{field}'")
        if self.kind == "mha" and self.inner % self.heads:
            raise NasBertError(f"attention of {self.inner} dimensions does not split into {self.heads} heads")

    def __str__(self) -> str:
        if self.kind == "mha":
            return f"mha(heads={self.heads}" + (f"x{self.inner // self.heads})" if self.inner else ")")
        arg = {"ffn": f"inner={self.inner}", "sepconv": f"kernel={self.kernel}"}
        return f"{self.kind}({arg[self.kind]})" if self.kind in arg else self.kind

    def attention_width(self, hidden: int) -> int:
        """Query, key and value dimensions of an attention: its own `inner`, else the block's width."""
        return self.inner or hidden

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.kind}
        for field in ("heads", "inner", "kernel"):
            if getattr(self, field):
                d[field] = getattr(self, field)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Op:
        extra = set(d) - {"op", "heads", "inner", "kernel"}
        if "op" not in d or extra:
            raise NasBertError(f"bad operator {d!r}: expected keys op and one of heads/inner/kernel")
        return cls(kind=d["op"], heads=d.get("heads", 0), inner=d.get("inner", 0), kernel=d.get("kernel", 0))

    def params(self, hidden: int) -> int:
        """Exact parameter count at this width, LayerNorm included (post-LN residual sublayer)."""
        ln = 2 * hidden
        if self.kind == "mha":
            a = self.attention_width(hidden)
            return 3 * (hidden * a + a) + a * hidden + hidden + ln
        if self.kind == "ffn":
            return 2 * hidden * self.inner + self.inner + hidden + ln
        if self.kind == "sepconv":
            return hidden * self.kernel + hidden + hidden * hidden + hidden + ln
        return 0

    def flops(self, hidden: int, seq_len: int) -> int:
        """Multiply-adds x 2 for one sequence (softmax and norms ignored)."""
        if self.kind == "mha":
            a = self.attention_width(hidden)
            return 2 * (4 * seq_len * hidden * a + 2 * seq_len * seq_len * a)
        if self.kind == "ffn":
            return 2 * (2 * seq_len * hidden * self.inner)
        if self.kind == "sepconv":
            return 2 * (seq_len * hidden * self.kernel + seq_len * hidden * hidden)
        return 0


IDENTITY = Op("identity")


@dataclass(frozen=True)
class Block:
    """A block: one hidden size shared by its sublayers, then the operator of each sublayer."""

    hidden: int
    ops: tuple[Op, ...]

    def __post_init__(self) -> None:
        # one form per student: an attention as wide as its block names no width of its own
        object.__setattr__(self, "ops", tuple(
            Op("mha", heads=op.heads) if op.kind == "mha" and op.inner == self.hidden else op for op in self.ops))

    @property
    def depth(self) -> int:
        return sum(op.kind != "identity" for op in self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "ops": [op.to_dict() for op in self.ops]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Block:
        return cls(hidden=int(d["hidden"]), ops=tuple(Op.from_dict(o) for o in d["ops"]))

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """Key of a block sub-architecture (block scores are memoised under it)."""
        return sha256_hex(self.canonical_json(), 16)

    def params(self) -> int:
        return sum(op.params(self.hidden) for op in self.ops)

    def __str__(self) -> str:
        return f"[{self.hidden}] " + " ".join(str(op) for op in self.ops)


@dataclass(frozen=True)
class Embeddings:
    """The teacher's embedding tables the student copies (ETD extraction), at the teacher's width."""

    vocab_size: int
    max_positions: int
    type_vocab_size: int
    width: int

    def params(self) -> int:
        return (self.vocab_size + self.max_positions + self.type_vocab_size) * self.width + 2 * self.width


@dataclass(frozen=True)
class Architecture:
    """A whole student. Frozen, hashable, with a canonical JSON form and a stable hash."""

    embeddings: Embeddings
    blocks: tuple[Block, ...]
    output: int = 0  # width of the output projection (the teacher's); 0: the last block's state is the output

    @classmethod
    def build(cls, embeddings: Embeddings, blocks: tuple[Block, ...]) -> Architecture:
        """A student whose output projection returns to the teacher's (embeddings') width."""
        return cls(embeddings, tuple(blocks), embeddings.width)

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "embeddings": {
                "vocab_size": self.embeddings.vocab_size,
                "max_positions": self.embeddings.max_positions,
                "type_vocab_size": self.embeddings.type_vocab_size,
                "width": self.embeddings.width,
            },
            "blocks": [b.to_dict() for b in self.blocks],
            **({"output": self.output} if self.output else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        try:
            return cls(embeddings=Embeddings(**d["embeddings"]), blocks=tuple(Block.from_dict(b) for b in d["blocks"]),
                       output=int(d.get("output", 0)))
        except (KeyError, TypeError) as e:
            raise NasBertError(f"not an architecture JSON: missing or unexpected key ({e})") from None

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))

    def hash(self) -> str:
        return sha256_hex(self.canonical_json(), 16)

    def __str__(self) -> str:
        return " | ".join(str(b) for b in self.blocks) + (f" -> {self.output}" if self.output else "")

    # -- size ----------------------------------------------------------------------------
    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(b.hidden for b in self.blocks)

    @property
    def depth(self) -> int:
        return sum(b.depth for b in self.blocks)

    def reorders(self) -> bool:
        """Whether the extracted student reorders its output into the teacher's dimensions: only a full-width last
        block after a narrower one (a student all at full width has the importance order folded into its
        weights, a narrower last block has its linear map back)."""
        return bool(self.output) and self.blocks[-1].hidden == self.output and any(
            b.hidden != self.output for b in self.blocks)

    def params(self) -> int:
        """Exact parameter count of the extracted student (embeddings and linear maps included)."""
        total = self.embeddings.params()
        prev = self.embeddings.width
        for b in self.blocks:
            total += transition_params(prev, b.hidden) + b.params()
            prev = b.hidden
        return total + output_params(prev, self.output)

    def flops(self, seq_len: int = 128) -> int:
        """Multiply-adds x 2 for one sequence; embedding lookups, slices and reorderings are free."""
        total, prev = 0, self.embeddings.width
        for b in self.blocks:
            if b.hidden > prev:  # the linear prediction of the dimensions a wider block adds
                total += 2 * seq_len * prev * (b.hidden - prev)
            total += sum(op.flops(b.hidden, seq_len) for op in b.ops)
            prev = b.hidden
        return total + (2 * seq_len * prev * self.output if self.output and prev != self.output else 0)

    # -- validity ------------------------------------------------------------------------
    def validate(self, space: SearchSpace) -> Architecture:
        """Raise NasBertError naming the first block and sublayer that the space does not allow."""
        if len(self.blocks) != space.blocks:
            raise NasBertError(f"architecture has {len(self.blocks)} blocks; space '{space.name}' has {space.blocks}")
        prev = self.embeddings.width
        for i, b in enumerate(self.blocks):
            validate_block(b, space, i)
            if space.layer_slots and not b.depth and b.hidden != prev:
                raise NasBertError(f"block {i}: a dropped layer keeps the width before it ({prev}), not {b.hidden}")
            prev = b.hidden
        widths = {b.hidden for b in self.blocks if b.depth}
        if space.shared_width and len(widths) > 1:
            raise NasBertError(f"widths {sorted(widths)}: space '{space.name}' keeps one width for every layer "
                               "(shared_width: false allows a width per layer)")
        return self


def transition_params(in_width: int, width: int) -> int:
    """Parameters of the map into a block: none unless it is wider (a linear prediction of the rest)."""
    return (in_width + 1) * (width - in_width) if width > in_width else 0


def output_params(width: int, output: int) -> int:
    """Parameters of the map back to the teacher's width: none from a full-width last block."""
    return (width + 1) * output if output and width != output else 0


def mha_op(heads: int, head_size: int, hidden: int) -> Op:
    """An attention of `heads` heads of `head_size` in a block of width `hidden` (its canonical form)."""
    return Op("mha", heads=heads, inner=0 if heads * head_size == hidden else heads * head_size)


def op_choices(space: SearchSpace, hidden: int, position: int | None = None) -> list[Op]:
    """The non-identity operators a sublayer of width `hidden` may take, in a fixed order (in a space of layer
    slots, those of sublayer `position`: 0 attention or convolution, 1 feed-forward; None: both)."""
    ops: list[Op] = []
    first = position is None or not space.layer_slots or position % 2 == 0
    second = position is None or not space.layer_slots or position % 2 == 1
    if "mha" in space.operators and first:
        if space.head_counts:
            ops += [mha_op(k, space.head_size, hidden) for k in space.head_counts]
        else:
            ops.append(Op("mha", heads=hidden // space.head_size))
    if "ffn" in space.operators and second:
        ops += [Op("ffn", inner=n) for n in space.ffn_sizes] if space.ffn_sizes else [
            Op("ffn", inner=r * hidden) for r in space.ffn_ratios]
    if "sepconv" in space.operators and first:
        ops += [Op("sepconv", kernel=k) for k in space.conv_kernels]
    return ops


def validate_block(b: Block, space: SearchSpace, index: int = 0) -> Block:
    where = f"block {index}"
    if b.hidden not in space.hidden_sizes:
        raise NasBertError(f"{where}: hidden size {b.hidden} not in the space's hidden_sizes {list(space.hidden_sizes)}")
    if len(b.ops) != space.sublayers_per_block:
        raise NasBertError(f"{where}: {len(b.ops)} sublayers; the space has {space.sublayers_per_block} per block")
    allowed = op_choices(space, b.hidden)
    seen_identity = False
    for j, op in enumerate(b.ops):
        if space.layer_slots:  # a teacher layer's attention and feed-forward: each kept or dropped
            if op.kind != "identity" and op not in (choices := op_choices(space, b.hidden, j)):
                raise NasBertError(f"{where}, sublayer {j}: {op} not allowed at width {b.hidden}; allowed: "
                                   f"{[str(o) for o in choices]} or identity")
            continue
        if op.kind == "identity":
            if "identity" not in space.operators:
                raise NasBertError(f"{where}, sublayer {j}: identity is not in this space")
            seen_identity = True
        elif seen_identity:
            raise NasBertError(f"{where}, sublayer {j}: {op} after identity; identity may only end a block")
        elif op not in allowed:
            raise NasBertError(f"{where}, sublayer {j}: {op} not allowed at width {b.hidden}; allowed: {[str(o) for o in allowed]}")
    if b.depth not in space.depths:
        raise NasBertError(f"{where}: depth {b.depth} outside the space's depths {list(space.depths)}")
    return b


def sample_block(space: SearchSpace, rng: random.Random, uniform_depth: bool = False,
                 hidden: int | None = None) -> Block:
    """Uniform over all block sub-architectures (at width `hidden` where given): a depth is drawn in proportion
    to its path count (or, with `uniform_depth`, uniformly, so shallow blocks are as likely as deep ones)."""
    hidden = hidden or rng.choice(space.hidden_sizes)
    if space.layer_slots:  # each sublayer kept (at a size drawn uniformly) or dropped, half and half
        return Block(hidden, tuple(rng.choice(op_choices(space, hidden, j)) if rng.random() < 0.5 else IDENTITY
                                   for j in range(space.sublayers_per_block)))
    choices = op_choices(space, hidden)
    depths = list(space.depths)
    if uniform_depth:
        depth = rng.choice(depths)
    else:
        depth = rng.choices(depths, weights=[len(choices) ** d for d in depths])[0]
    ops = [rng.choice(choices) for _ in range(depth)]
    return Block(hidden, tuple(ops) + (IDENTITY,) * (space.sublayers_per_block - depth))


def sample(space: SearchSpace, embeddings: Embeddings, seed: int | random.Random,
           uniform_depth: bool = False) -> Architecture:
    """A uniformly random architecture (see `sample_block` for `uniform_depth`); the same seed gives the
    same architecture."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    width = rng.choice(space.hidden_sizes) if space.shared_width else None
    blocks = [sample_block(space, rng, uniform_depth, width) for _ in range(space.blocks)]
    return Architecture.build(embeddings, tuple(keep_widths(blocks, embeddings.width, space)))


def keep_widths(blocks: list[Block], width: int, space: SearchSpace) -> list[Block]:
    """In a space of layer slots a dropped layer passes its input on as it is: at the width before it."""
    if not space.layer_slots:
        return blocks
    out = []
    for b in blocks:
        out.append(b if b.depth else Block(width, b.ops))
        width = out[-1].hidden
    return out


def largest_block(space: SearchSpace) -> Block:
    """Widest, full depth, the teacher's own pattern (attention then the widest feed-forward)."""
    h = space.max_hidden
    choices = op_choices(space, h)
    pattern = [c for c in choices if c.kind == "mha"][-1:] + [c for c in choices if c.kind == "ffn"][-1:]
    pattern = pattern or [max(choices, key=lambda o: o.params(h))]
    ops = tuple(pattern[i % len(pattern)] for i in range(space.sublayers_per_block))
    return Block(h, ops)


def smallest_block(space: SearchSpace) -> Block:
    """Narrowest, shallowest, the operator with the fewest parameters."""
    h = space.hidden_sizes[0]
    cheapest = min(op_choices(space, h), key=lambda o: (o.params(h), o.flops(h, 128)))
    if space.layer_slots:  # one sublayer kept: a block of nothing would keep the width before it
        j = 0 if cheapest in op_choices(space, h, 0) else 1
        return Block(h, tuple(cheapest if i == j else IDENTITY for i in range(space.sublayers_per_block)))
    depth = space.depths[0]
    return Block(h, (cheapest,) * depth + (IDENTITY,) * (space.sublayers_per_block - depth))


def teacher_pair(space: SearchSpace, width: int | None = None, ratio: int | None = None) -> tuple[Op, Op] | None:
    """One teacher layer inside the space: attention then the widest feed-forward, at full width (or at
    `width`: the layer's most important heads, neurons and dimensions, as the supernet slices it; with
    `ratio`, a feed-forward of ratio x width neurons: the most important ones, the rest pruned)."""
    h = width or space.max_hidden
    ratio = ratio or max(space.ffn_ratios)
    if not {"mha", "ffn"} <= set(space.operators) or h // space.head_size < 1 or ratio not in space.ffn_ratios:
        return None
    if space.layer_slots:  # the teacher's layer narrowed: heads and neurons in proportion (uniform width)
        heads, inner = h // space.head_size, space.max_inner * h // space.max_hidden
        if heads not in space.head_counts or inner not in space.ffn_sizes:
            return None
        return mha_op(heads, space.head_size, h), Op("ffn", inner=inner)
    return Op("mha", heads=h // space.head_size), Op("ffn", inner=ratio * h)


def truncated(space: SearchSpace, embeddings: Embeddings, layers: int, width: int | None = None,
              ratio: int | None = None) -> Architecture | None:
    """The teacher's first `layers` layers as a student of the space: (attention, feed-forward) pairs at
    full width (or sliced to `width`, ETD's extraction; with `ratio`, their feed-forward pruned to ratio x
    width neurons) filling the blocks in order, identity after them (None when the space cannot hold it: no
    identity, a block that may not be empty, a ratio it does not have, or more layers than positions)."""
    width = width or space.max_hidden
    pair, pairs = teacher_pair(space, width, ratio), space.sublayers_per_block // 2
    if pair is None or "identity" not in space.operators or not 1 <= layers <= space.blocks * pairs:
        return None
    blocks = []
    for b in range(space.blocks):
        n = max(0, min(pairs, layers - b * pairs))
        blocks.append(Block(width, pair * n + (IDENTITY,) * (space.sublayers_per_block - 2 * n)))
    arch = Architecture.build(embeddings, tuple(blocks))
    try:
        return arch.validate(space)
    except NasBertError:
        return None


def largest(space: SearchSpace, embeddings: Embeddings) -> Architecture:
    return Architecture.build(embeddings, (largest_block(space),) * space.blocks)


def smallest(space: SearchSpace, embeddings: Embeddings) -> Architecture:
    return Architecture.build(embeddings, (smallest_block(space),) * space.blocks)
