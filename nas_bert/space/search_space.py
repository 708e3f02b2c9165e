"""Search spaces as data: YAML files under search_spaces/, validated into a typed object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas_bert.errors import NasBertError
from nas_bert.store import json_hash, read_mapping, validate

OpKind = Literal["mha", "ffn", "sepconv", "identity"]
SEARCH_SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


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
        return self

    # -- derived sizes -------------------------------------------------------------------
    @property
    def max_hidden(self) -> int:
        return self.hidden_sizes[-1]

    @property
    def max_inner(self) -> int:
        return max(self.ffn_ratios) * self.max_hidden

    @property
    def max_kernel(self) -> int:
        return max(self.conv_kernels) if "sepconv" in self.operators else 0

    @property
    def depths(self) -> range:
        """Allowed block depths: without identity every sublayer is used."""
        low = self.min_depth if "identity" in self.operators else self.sublayers_per_block
        return range(low, self.sublayers_per_block + 1)

    def fingerprint(self) -> str:
        """Stable hash of the space; checkpoints record it so they are never loaded into another."""
        return json_hash(self.model_dump(mode="json"), compact=True)

    @property
    def operator_choices(self) -> int:
        """How many non-identity operators one sublayer may take (`architecture.op_choices` lists them)."""
        return (("mha" in self.operators) + len(self.ffn_ratios) * ("ffn" in self.operators)
                + len(self.conv_kernels) * ("sepconv" in self.operators))

    def paths_per_block(self) -> int:
        """Number of distinct block sub-architectures (all widths, all depths)."""
        return sum(self.operator_choices ** depth for depth in self.depths) * len(self.hidden_sizes)

    def check_teacher(self, num_layers: int, hidden_size: int) -> None:
        """The space must fit the teacher it is distilled from."""
        if self.max_hidden > hidden_size:
            raise NasBertError(
                f"search space '{self.name}': hidden_sizes go up to {self.max_hidden} but the teacher's "
                f"hidden size is {hidden_size}; use widths <= {hidden_size}"
            )
        if num_layers % self.blocks:
            raise NasBertError(
                f"search space '{self.name}': {self.blocks} blocks do not divide the teacher's "
                f"{num_layers} layers; choose blocks among {[d for d in range(1, num_layers + 1) if num_layers % d == 0]}"
            )


def load_space(name_or_path: str | Path, base_dir: Path | None = None) -> SearchSpace:
    """Load a space from a YAML path, or by bare name from the project's search_spaces/ folder."""
    path = resolve_space_path(name_or_path, base_dir)
    data = read_mapping(path, f"search space {path}")
    data.setdefault("name", path.stem)
    return validate(SearchSpace, data, f"search space {path}")


def resolve_space_path(name_or_path: str | Path, base_dir: Path | None = None) -> Path:
    raw = Path(name_or_path)
    candidates = [raw] if raw.is_absolute() else [
        *([base_dir / raw] if base_dir else []),
        Path.cwd() / raw,
        *([base_dir.parent / raw] if base_dir else []),
    ]
    if raw.suffix not in (".yaml", ".yml") and len(raw.parts) == 1:
        candidates.append(SEARCH_SPACES_DIR / f"{raw}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(p.stem for p in SEARCH_SPACES_DIR.glob("*.yaml"))
    raise NasBertError(f"search space '{name_or_path}' not found; give a YAML path or one of {known}")
