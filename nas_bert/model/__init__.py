"""The exported student's own code: `configuration_nas_bert` and `modeling_nas_bert` are copied into every
exported folder and import nothing of nas_bert; `folder` writes a student as a model folder.
"""

from nas_bert.model.configuration_nas_bert import NasBertConfig
from nas_bert.model.folder import save_student, write_student_folder
from nas_bert.model.modeling_nas_bert import (
    NasBertEmbeddings,
    NasBertLayer,
    NasBertModel,
    attention,
    feed_forward,
    mask_bias,
    post_norm,
    resize,
    sep_conv,
)

__all__ = ["NasBertConfig", "NasBertEmbeddings", "NasBertLayer", "NasBertModel", "attention", "feed_forward", "mask_bias", "post_norm", "resize", "save_student", "sep_conv", "write_student_folder"]
