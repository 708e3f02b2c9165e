"""A student as a self-contained model folder: transformers' save_pretrained with the student's own code,
the teacher's tokenizer and, for a sentence-transformers teacher, the same pooling files.

The folder loads with `AutoModel.from_pretrained(path, trust_remote_code=True)` with nothing but torch
and transformers installed, and, when the teacher was a sentence-transformers model, with
`SentenceTransformer(path, trust_remote_code=True)` as a drop-in replacement of the teacher.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nas_bert.errors import NasBertError
from nas_bert.model.configuration_nas_bert import NasBertConfig
from nas_bert.model.modeling_nas_bert import NasBertModel
from nas_bert.store import atomic_folder
from nas_bert.teacher import Pooling, Teacher, write_sentence_transformers_files

CODE_FILES = ("configuration_nas_bert.py", "modeling_nas_bert.py")


def write_student_folder(model: NasBertModel, folder: Path, tokenizer: Any, pooling: Pooling | None = None,
                         max_seq_length: int = 256) -> None:
    """Weights, config.json with auto_map, the two student code files, the tokenizer, and with `pooling`
    the sentence-transformers files (modules.json, 1_Pooling/config.json, sentence_bert_config.json)."""
    # Registering makes save_pretrained copy the defining module and its relative imports, and write auto_map.
    NasBertConfig.register_for_auto_class()
    NasBertModel.register_for_auto_class("AutoModel")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in CODE_FILES:  # the copies must not reach back into nas_bert, or loading needs it installed
        path = folder / name
        if not path.is_file() or re.search(r"^\s*(from|import)\s+nas_bert\b", path.read_text(), re.MULTILINE):
            raise NasBertError(f"{path} is missing or imports nas_bert; the student code must be self-contained")
    if pooling is not None:
        width = int(model.config.hidden_size)
        write_sentence_transformers_files(folder, pooling, width, min(max_seq_length, model.config.max_position_embeddings))


def save_student(student: NasBertModel, teacher: Teacher, folder: Path) -> Path:
    """`write_student_folder` into a temporary folder beside `folder`, then renamed into place: a kill
    never leaves half a folder, and the old one is removed only once the new one is complete."""
    with atomic_folder(folder) as tmp:
        write_student_folder(student, tmp, teacher.tokenizer, teacher.pooling)
    return folder
