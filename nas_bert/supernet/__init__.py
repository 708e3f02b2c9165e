"""Stage 1: the weight-sharing supernet (`elastic`), its block-wise training against the teacher
(`blockwise`), and the hand-designed students copied from the teacher (`baselines`).
"""

from nas_bert.supernet.baselines import (
    describe,
    pruned_architecture,
    teacher_initialised,
    truncated_architecture,
    uniform_architecture,
)
from nas_bert.supernet.blockwise import (
    BlockwiseObjective,
    SupernetResult,
    TeacherPath,
    ValidationCache,
    block_val_loss,
    build_supernet,
    find_run,
    load_supernet_checkpoint,
    masked_mse,
    supernet_dir,
    supernet_key,
    train_supernet,
)
from nas_bert.supernet.elastic import Supernet, inherit_teacher, teacher_layer

__all__ = ["BlockwiseObjective", "Supernet", "SupernetResult", "TeacherPath", "ValidationCache", "block_val_loss", "build_supernet", "describe", "find_run", "inherit_teacher", "load_supernet_checkpoint", "masked_mse", "pruned_architecture", "supernet_dir", "supernet_key", "teacher_initialised", "teacher_layer", "train_supernet", "truncated_architecture", "uniform_architecture"]
