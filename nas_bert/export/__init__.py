"""Stage 9: students as self-contained Hugging Face and sentence-transformers folders (`folders`), their ONNX
and int8 variants (`onnx_export`), model cards (`card`) and pictures of the fronts (`plots`).
"""

from nas_bert.export.folders import ExportedStudent, ExportResult, export_front, extract_student, select_members
from nas_bert.export.onnx_export import VARIANTS, export_onnx, measure_latencies, session
from nas_bert.export.plots import plot_fronts, save_figure

__all__ = ["VARIANTS", "ExportResult", "ExportedStudent", "export_front", "export_onnx", "extract_student", "measure_latencies", "plot_fronts", "save_figure", "select_members", "session"]
