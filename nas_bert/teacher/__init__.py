"""The teacher: loading by alias, folder or Hub id with its use and pooling (`loading`), where its family keeps
its weights (`families`), and how much each of its units matters (`importance`).
"""

from nas_bert.teacher.families import Family, RelativeAttention, TeacherEmbeddings, TeacherLayer, family_of
from nas_bert.teacher.importance import Importance, head_size, teacher_importance, teacher_layers
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

__all__ = ["Family", "Importance", "Pooling", "RelativeAttention", "Teacher", "TeacherEmbeddings", "TeacherLayer", "embeddings_spec_of", "family_of", "head_size", "load_teacher", "load_teacher_config", "resolve_teacher", "sentence_pooling", "teacher_identity", "teacher_importance", "teacher_layers", "write_sentence_transformers_files"]
