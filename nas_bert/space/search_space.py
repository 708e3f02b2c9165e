"""Search spaces as data: YAML files under search_spaces/, validated into a typed object."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas_bert.errors import NasBertError
from nas_bert.shipped import shipped_file, shipped_names
from nas_bert.store import json_hash, read_mapping, validate

OpKind = Literal["mha", "ffn", "sepconv", "identity"]


class SearchSpace(BaseModel):
    """NAS-BERT's space: blocks of sublayers; one hidden size per block; one operator per sublayer.

    Identity may only follow the other operators of its block (NAS-BERT's rule that removes
    duplicate depths), so a block's depth is its count of non-identity operators.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    blocks: int = Field(ge=1, description="blocks; the teacher's layer count must be a multiple")
    sublayers_per_block: int = Field(ge=1, description="NAS-BERT: 2 x teacher layers per block")
    hidden_sizes: tuple[int, ...] = Field(min_length=1)
    head_size: int = Field(default=64, ge=1, description="attention heads = hidden / head_size")
    ffn_ratios: tuple[int, ...] = Field(default=(4,), min_length=1)
    conv_kernels: tuple[int, ...] = Field(default=(3, 5, 7))
    operators: tuple[OpKind, ...] = Field(default=("mha", "ffn", "sepconv", "identity"), min_length=1)
    min_depth: int = Field(default=1, ge=0, description="fewest non-identity sublayers in a block (0: a block may be "
                                                         "empty, so the teacher's first layers are students of the space)")
    # A space made from the teacher (`from_teacher`): one block per teacher layer whose sublayer 0 is that layer's
    # attention and sublayer 1 its feed-forward, each kept at a size of its own or dropped (identity, anywhere).
    layer_slots: bool = Field(default=False, description="one block per teacher layer: sublayer 0 its attention "
                                                         "(or a convolution), 1 its feed-forward; identity drops either")
    head_counts: tuple[int, ...] = Field(default=(), description="attention heads a sublayer may keep, whatever the "
                                         "block's width (Minitron's head pruning); empty: width / head_size")
    ffn_sizes: tuple[int, ...] = Field(default=(), description="feed-forward neurons a sublayer may keep, whatever "
                                       "the block's width; empty: ffn_ratios x width")
    shared_width: bool = Field(default=False, description="one hidden width for every layer a student keeps (as "
                               "every hand-designed recipe); false: a width per block")

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if list(self.hidden_sizes) != sorted(set(self.hidden_sizes)) or min(self.hidden_sizes) < 1:
            raise ValueError("hidden_sizes must be positive, unique and increasing")
        if "mha" in self.operators:
            bad = [h for h in self.hidden_sizes if h % self.head_size]
            if bad:
                raise ValueError(f"hidden_sizes {bad} are not multiples of head_size {self.head_size}")
        if "sepconv" in self.operators and (
            not self.conv_kernels or any(k < 1 or k % 2 == 0 for k in self.conv_kernels)
        ):
            raise ValueError("conv_kernels must be a non-empty list of odd sizes")
        if any(r < 1 for r in self.ffn_ratios):
            raise ValueError("ffn_ratios must be positive")
        if not set(self.operators) - {"identity"}:
            raise ValueError("operators needs at least one of mha, ffn, sepconv")
        if self.min_depth > self.sublayers_per_block:
            raise ValueError("min_depth exceeds sublayers_per_block")
        for field in ("head_counts", "ffn_sizes"):
            values = getattr(self, field)
            if list(values) != sorted(set(values)) or any(v < 1 for v in values):
                raise ValueError(f"{field} must be positive, unique and increasing")
        if self.layer_slots and (self.sublayers_per_block != 2 or "identity" not in self.operators or self.min_depth):
            raise ValueError("a space of layer slots has 2 sublayers per block (attention, feed-forward), "
                             "identity among its operators and min_depth 0")
        return self

    # -- derived sizes -------------------------------------------------------------------
    @property
    def max_hidden(self) -> int:
        return self.hidden_sizes[-1]

    @property
    def max_inner(self) -> int:
        return max(self.ffn_sizes) if self.ffn_sizes else max(self.ffn_ratios) * self.max_hidden

    @property
    def max_attention(self) -> int:
        """The widest attention (query, key and value outputs): heads x head size at most."""
        return max(self.max_hidden, max(self.head_counts, default=0) * self.head_size)

    @property
    def max_kernel(self) -> int:
        return max(self.conv_kernels) if "sepconv" in self.operators else 0

    @property
    def depths(self) -> range:
        """Allowed block depths: without identity every sublayer is used."""
        low = self.min_depth if "identity" in self.operators else self.sublayers_per_block
        return range(low, self.sublayers_per_block + 1)

    def fingerprint(self) -> str:
        """Stable hash of the space; checkpoints record it so they are never loaded into another. The fields of
        the spaces made from the teacher are left out where unused, so a YAML space keeps its old fingerprint."""
        dump = self.model_dump(mode="json")
        for key in NEW_FIELDS:
            if dump[key] == SearchSpace.model_fields[key].default or dump[key] == []:
                dump.pop(key)
        return json_hash(dump, compact=True)

    @property
    def attention_choices(self) -> int:
        return len(self.head_counts) if self.head_counts else 1

    @property
    def ffn_choices(self) -> int:
        return len(self.ffn_sizes) if self.ffn_sizes else len(self.ffn_ratios)

    @property
    def operator_choices(self) -> int:
        """How many non-identity operators one sublayer may take (`architecture.op_choices` lists them)."""
        return (self.attention_choices * ("mha" in self.operators) + self.ffn_choices * ("ffn" in self.operators)
                + len(self.conv_kernels) * ("sepconv" in self.operators))

    def paths_per_block(self) -> int:
        """Number of distinct block sub-architectures (all widths, all depths)."""
        if self.layer_slots:  # (attention or convolution or nothing) x (feed-forward or nothing)
            first = self.attention_choices * ("mha" in self.operators) + len(self.conv_kernels) * ("sepconv" in self.operators)
            second = self.ffn_choices * ("ffn" in self.operators)
            return (first + 1) * (second + 1) * len(self.hidden_sizes)
        return sum(self.operator_choices ** depth for depth in self.depths) * len(self.hidden_sizes)

    def check_teacher(self, num_layers: int, hidden_size: int) -> None:
        """The space must fit the teacher it is distilled from."""
        if self.layer_slots and self.blocks != num_layers:
            raise NasBertError(f"search space '{self.name}' has a block per layer of a {self.blocks}-layer teacher; this "
                               f"teacher has {num_layers}: use search_space: auto, which is made from the teacher")
        if self.max_hidden > hidden_size:
            raise NasBertError(
                f"search space '{self.name}': hidden_sizes go up to {self.max_hidden} but the teacher's "
                f"hidden size is {hidden_size}; use widths <= {hidden_size}"
            )
        if self.max_attention > hidden_size:
            raise NasBertError(f"search space '{self.name}': attention heads up to {self.max_attention} dimensions; "
                               f"the teacher's hidden size is {hidden_size}; keep heads x head_size <= {hidden_size}")
        if num_layers % self.blocks:
            raise NasBertError(
                f"search space '{self.name}': {self.blocks} blocks do not divide the teacher's "
                f"{num_layers} layers; choose blocks among {[d for d in range(1, num_layers + 1) if num_layers % d == 0]}"
            )


NEW_FIELDS = ("layer_slots", "head_counts", "ffn_sizes", "shared_width")


class TeacherShape(BaseModel):
    """What a space made from the teacher needs to know of it (its config.json)."""

    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)

    @classmethod
    def of(cls, config: object) -> TeacherShape:
        """From a transformers config of any BERT-family encoder."""
        return cls(num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size),  # type: ignore[attr-defined]
                   num_heads=int(config.num_attention_heads),  # type: ignore[attr-defined]
                   intermediate_size=int(config.intermediate_size))  # type: ignore[attr-defined]

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


class TeacherRelativeSpace(BaseModel):
    """A space written relative to the teacher (`from_teacher: true`): every size a step of the teacher's own
    units, so one file serves a 6 x 384 and a 12 x 768 teacher alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "auto"
    from_teacher: Literal[True] = True
    width_step: int = Field(default=2, ge=1, description="hidden widths: multiples of width_step x the teacher's head "
                                                         "size, up to its width")
    head_step: int = Field(default=2, ge=1, description="attention heads kept per layer: multiples of head_step, up to "
                                                        "the teacher's heads")
    ffn_step: int = Field(default=2, ge=1, description="feed-forward neurons kept per layer: multiples of ffn_step x "
                                                       "(the teacher's neurons / its heads), up to all of them")
    operators: tuple[OpKind, ...] = ("mha", "ffn", "identity")
    conv_kernels: tuple[int, ...] = (3, 5, 7)
    shared_width: bool = Field(default=True, description="one hidden width for every layer a student keeps; false: a "
                                                         "width per layer (each change of width costs a projection)")

    def materialise(self, t: TeacherShape) -> SearchSpace:
        """The space for this teacher: one block per layer; every hand-designed cut is one of its points
        (`space.families`) when the steps divide the teacher's heads."""
        if t.hidden_size % t.num_heads or t.intermediate_size % t.num_heads:
            raise NasBertError(f"teacher with {t.num_heads} heads, hidden size {t.hidden_size} and {t.intermediate_size} "
                               "feed-forward neurons: sizes that are no multiple of the heads are not supported")
        hs, unit = t.head_size, t.intermediate_size // t.num_heads

        def steps(step: int) -> list[int]:
            return sorted({*range(step, t.num_heads + 1, step), t.num_heads})

        return SearchSpace(name=self.name, blocks=t.num_layers, sublayers_per_block=2, layer_slots=True,
                           hidden_sizes=tuple(k * hs for k in steps(self.width_step)), head_size=hs,
                           head_counts=tuple(steps(self.head_step)), ffn_ratios=(1,),
                           ffn_sizes=tuple(k * unit for k in steps(self.ffn_step)),
                           conv_kernels=self.conv_kernels, operators=self.operators, min_depth=0,
                           shared_width=self.shared_width)


def load_space(name_or_path: str | Path, base_dir: Path | None = None,
               teacher: Callable[[], TeacherShape] | None = None) -> SearchSpace:
    """Load a space from a YAML path, or by bare name from the project's search_spaces/ folder. A space written
    relative to the teacher (`from_teacher: true`, e.g. `auto`) is made for the teacher `teacher()` describes."""
    path = resolve_space_path(name_or_path, base_dir)
    data = read_mapping(path, f"search space {path}")
    data.setdefault("name", path.stem)
    if data.get("from_teacher"):
        spec = validate(TeacherRelativeSpace, data, f"search space {path}")
        if teacher is None:
            raise NasBertError(f"search space {path} is made from the teacher; load it with the study's teacher")
        try:
            return spec.materialise(teacher())
        except ValueError as e:  # pydantic's, from a teacher too small for the steps
            raise NasBertError(f"search space {path} does not fit this teacher: {str(e).splitlines()[-1]}") from None
    return validate(SearchSpace, data, f"search space {path}")


def resolve_space_path(name_or_path: str | Path, base_dir: Path | None = None) -> Path:
    raw = Path(name_or_path)
    candidates = [raw] if raw.is_absolute() else [
        *([base_dir / raw] if base_dir else []),
        Path.cwd() / raw,
        *([base_dir.parent / raw] if base_dir else []),
    ]
    shipped = shipped_file("search_spaces", str(name_or_path))
    candidates += [shipped] if shipped else []
    for c in candidates:
        if c.is_file():
            return c
    known = shipped_names("search_spaces")
    raise NasBertError(f"search space '{name_or_path}' not found; give a YAML path or one of {known}")
