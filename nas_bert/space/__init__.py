"""What a student can be: the search space read from YAML (`search_space`) and the one `Architecture`
object that flows from search to export (`architecture`).
"""

from nas_bert.space.architecture import (
    IDENTITY,
    Architecture,
    Block,
    Embeddings,
    Op,
    largest,
    op_choices,
    output_params,
    sample,
    smallest,
    transition_params,
    truncated,
)
from nas_bert.space.search_space import SearchSpace, load_space

__all__ = ["IDENTITY", "Architecture", "Block", "Embeddings", "Op", "SearchSpace", "largest", "load_space", "op_choices", "output_params", "sample", "smallest", "transition_params", "truncated"]
