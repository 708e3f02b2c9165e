"""The teacher: loading by alias, folder or Hub id with its use and pooling (`loading`), and how much each of
its units matters (`importance`).
"""

from nas_bert.teacher.importance import Importance, bert_layers, head_size, teacher_importance
from nas_bert.teacher.loading import (
    Pooling,
    Teacher,
    embeddings_spec_of,
    load_teacher,
    load_teacher_config,
    resolve_teacher,
    sentence_pooling,
    teacher_identity,
    write_sentence_transformers_files,
)

__all__ = ["Importance", "Pooling", "Teacher", "bert_layers", "embeddings_spec_of", "head_size", "load_teacher", "load_teacher_config", "resolve_teacher", "sentence_pooling", "teacher_identity", "teacher_importance", "write_sentence_transformers_files"]
