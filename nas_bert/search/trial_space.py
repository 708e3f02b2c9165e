"""The define-by-run space of a search: an architecture as Optuna trial parameters, and back.

The space is static: every trial suggests a width per block and an operator token per sublayer; a
token list is turned into a valid block by moving identities to the block's end. In a space made from
the teacher a block is a teacher layer: its width, the heads and the neurons it keeps, or "drop"; a
dropped layer keeps the width before it.
"""

from __future__ import annotations

from typing import Any

import optuna

from nas_bert.space import IDENTITY, Architecture, Block, Op, SearchSpace, keep_widths, mha_op


def op_tokens(space: SearchSpace, position: int) -> list[str]:
    """Width-independent operator tokens for one sublayer position (a static Optuna space)."""
    tokens = []
    if "mha" in space.operators:
        tokens.append("mha")
    if "ffn" in space.operators:
        tokens += [f"ffn{r}" for r in space.ffn_ratios]
    if "sepconv" in space.operators:
        tokens += [f"sepconv{k}" for k in space.conv_kernels]
    if "identity" in space.operators and position >= space.min_depth:
        tokens.append("identity")  # the first min_depth sublayers always hold an operator
    return tokens


def token_op(token: str, hidden: int, space: SearchSpace) -> Op:
    if token == "mha":
        return Op("mha", heads=hidden // space.head_size)
    if token.startswith("ffn"):
        return Op("ffn", inner=int(token[3:]) * hidden)
    if token.startswith("sepconv"):
        return Op("sepconv", kernel=int(token[7:]))
    return IDENTITY


def slot_tokens(space: SearchSpace, position: int) -> list[str]:
    """A layer slot's tokens: sublayer 0 the heads kept ("h4") or a convolution, 1 the neurons kept ("n512"); or
    "drop" (identity)."""
    if position % 2 == 0:
        tokens = [f"h{k}" for k in space.head_counts] if "mha" in space.operators else []
        tokens += [f"sepconv{k}" for k in space.conv_kernels] if "sepconv" in space.operators else []
    else:
        tokens = [f"n{n}" for n in space.ffn_sizes] if "ffn" in space.operators else []
    return [*tokens, "drop"]


def slot_op(token: str, hidden: int, space: SearchSpace) -> Op:
    if token.startswith("h"):
        return mha_op(int(token[1:]), space.head_size, hidden)
    if token.startswith("n"):
        return Op("ffn", inner=int(token[1:]))
    if token.startswith("sepconv"):
        return Op("sepconv", kernel=int(token[7:]))
    return IDENTITY


def slot_token(op: Op) -> str:
    """The inverse of `slot_op`."""
    if op.kind == "mha":
        return f"h{op.heads}"
    if op.kind == "ffn":
        return f"n{op.inner}"
    return f"sepconv{op.kernel}" if op.kind == "sepconv" else "drop"


def suggest_architecture(trial: optuna.trial.BaseTrial, space: SearchSpace, teacher_emb: Any) -> Architecture:
    if space.layer_slots:  # per teacher layer: its width, the heads and the neurons it keeps (or drops them)
        blocks = []
        shared = trial.suggest_categorical("hidden", list(space.hidden_sizes)) if space.shared_width else None
        for b in range(space.blocks):
            hidden = shared or trial.suggest_categorical(f"b{b}_hidden", list(space.hidden_sizes))
            blocks.append(Block(hidden, tuple(slot_op(trial.suggest_categorical(f"b{b}_s{j}", slot_tokens(space, j)),
                                                      hidden, space) for j in range(space.sublayers_per_block))))
        return Architecture.build(teacher_emb, tuple(keep_widths(blocks, teacher_emb.width, space))).validate(space)
    blocks = []
    for b in range(space.blocks):
        hidden = trial.suggest_categorical(f"b{b}_hidden", list(space.hidden_sizes))
        ops = [token_op(trial.suggest_categorical(f"b{b}_s{j}", op_tokens(space, j)), hidden, space)
               for j in range(space.sublayers_per_block)]
        # NAS-BERT's rule (identity only ends a block) as a repair: identities move to the end.
        kept = [op for op in ops if op.kind != "identity"]
        blocks.append(Block(hidden, tuple(kept) + (IDENTITY,) * (len(ops) - len(kept))))
    return Architecture.build(teacher_emb, tuple(blocks)).validate(space)


def op_token(op: Op, hidden: int) -> str:
    """The search token of an operator (the inverse of `token_op`)."""
    if op.kind == "ffn":
        return f"ffn{op.inner // hidden}"
    if op.kind == "sepconv":
        return f"sepconv{op.kernel}"
    return op.kind


def trial_params(arch: Architecture, space: SearchSpace | None = None) -> dict[str, Any]:
    """The trial parameters that suggest `arch` (for `enqueue_trial`)."""
    token = slot_token if space is not None and space.layer_slots else op_token
    params = {k: v for b, blk in enumerate(arch.blocks) for k, v in
              ((f"b{b}_hidden", blk.hidden), *((f"b{b}_s{j}", token(op, blk.hidden) if token is op_token else token(op))
                                               for j, op in enumerate(blk.ops)))}
    if space is not None and space.shared_width:  # one width, that of the layers kept (all of them: the widest)
        params = {k: v for k, v in params.items() if not k.endswith("_hidden")}
        params["hidden"] = max((b.hidden for b in arch.blocks if b.depth), default=space.max_hidden)
    return params
