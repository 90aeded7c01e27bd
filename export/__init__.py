"""ONNX export with explicit quantization (Q/DQ), INT4 rewrite, checks and TensorRT audit.

from pqcad_deploy.export import ExportOptions, export, load_checkpoint
report = export(load_checkpoint("student.pt"), "unet.onnx", ExportOptions(precision="fp16"))
"""

from .audit import audit_model
from .checks import CheckError
from .onnx_export import ExportError
from .pipeline import ExportOptions, check_only, export, load_checkpoint, random_model
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
    "load_checkpoint",
    "random_model",
]
