"""What a student can be: the search space read from YAML (`search_space`) and the one `Architecture`
object that flows from search to export (`architecture`).
"""

from nas_bert.space.architecture import (
    IDENTITY,
    Architecture,
    Block,
    Embeddings,
    Op,
    keep_widths,
    largest,
    mha_op,
    op_choices,
    output_params,
    sample,
    smallest,
    transition_params,
    truncated,
)
from nas_bert.space.families import (
    FAMILIES,
    families,
    grown,
    layers_point,
    neighbours,
    spread_layers,
    teacher_point,
)
from nas_bert.space.search_space import SearchSpace, TeacherRelativeSpace, TeacherShape, load_space

__all__ = ["FAMILIES", "IDENTITY", "Architecture", "Block", "Embeddings", "Op", "SearchSpace", "TeacherRelativeSpace",
           "TeacherShape", "families", "grown", "keep_widths", "largest", "layers_point", "load_space", "mha_op", "neighbours", "op_choices", "output_params", "sample", "smallest", "spread_layers", "teacher_point", "transition_params", "truncated"]
