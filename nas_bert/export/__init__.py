from nas_bert.export.card import _origin
from nas_bert.export.folders import ExportedStudent, ExportResult, export_front, extract_student, select_members
from nas_bert.export.onnx_export import VARIANTS, export_onnx, measure_latencies, session
from nas_bert.export.plots import plot_fronts, save_figure

__all__ = ["VARIANTS", "ExportResult", "ExportedStudent", "_origin", "export_front", "export_onnx", "extract_student", "measure_latencies", "plot_fronts", "save_figure", "select_members", "session"]
