"""ONNX export with explicit quantization (Q/DQ), INT4 rewrite, checks and TensorRT audit.

from pqcad_deploy.export import ExportOptions, export
from pqcad_deploy.loading import open_model
report = export(open_model("student.pt"), "unet.onnx", ExportOptions(precision="fp16"))
"""

from .audit import audit_model
from .checks import CheckError
from .onnx_export import ExportError
from .ort_static import ort_quantize_static
from .pipeline import ExportOptions, check_only, export
from .spec import ExportSpec, export_spec_for

__all__ = [
    "CheckError",
    "ExportError",
    "ExportOptions",
    "ExportSpec",
    "audit_model",
    "check_only",
    "export",
    "export_spec_for",
    "ort_quantize_static",
]
