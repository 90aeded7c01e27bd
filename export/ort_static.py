"""ONNX Runtime's own static INT8 quantization of an FP32 export: the stock-tool PTQ baseline.

It answers "what would the off-the-shelf tool give on the same graph and calibration data?", so the project's
Q/DQ placement is compared against something that is not its own. Defaults match what ORT's x86 CPU kernels fuse:
QDQ format, per-channel int8 weights, uint8 activations, Conv/MatMul/Gemm only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pqcad_deploy.calibset import CalibSet, calib_batches
from pqcad_deploy.denoiser import COND, SAMPLE, TIMESTEP
from pqcad_deploy.io import default_file_mode, writable_parent

from .onnx_export import ExportError

log = logging.getLogger(__name__)

OP_TYPES = ("Conv", "MatMul", "Gemm")


def calib_feeds(
    calib: CalibSet, batch_size: int = 8, max_batches: int | None = None
) -> list[dict[str, np.ndarray]]:
    """ONNX feeds (graph input names) from a calibration set, in its stored order, so ORT's calibrator sees the
    same timestep-aware points the project's own PTQ calibrates on."""
    feeds = []
    for i, b in enumerate(calib_batches(calib, batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        feed = {SAMPLE: b["x_t"].float().numpy(), TIMESTEP: b["t"].long().numpy()}
        if "cond" in b:
            feed[COND] = b["cond"].numpy()
        feeds.append(feed)
    return feeds


def ort_quantize_static(
    fp32_onnx: str | os.PathLike,
    out: str | os.PathLike,
    feeds: Iterable[Mapping[str, np.ndarray]],
    op_types: tuple[str, ...] = OP_TYPES,
    per_channel: bool = True,
) -> Path:
    """Quantize ``fp32_onnx`` with ``onnxruntime.quantization.quantize_static`` calibrated on ``feeds`` and write
    ``out`` atomically (a failure leaves no file). Returns ``out``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    out = Path(out)
    parent = writable_parent(out, ExportError, "choose another output path")
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{out.name}.") as tmpd:
        pre, quant = Path(tmpd) / "pre.onnx", Path(tmpd) / out.name
        try:
            # ORT's symbolic shape inference does not handle the diffusers UNet; ONNX shape inference does.
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(quant),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(op_types),
            )
        except Exception as e:  # ORT raises plain Exceptions, ValueErrors and its own types
            raise ExportError(
                f"onnxruntime quantize_static failed on {fp32_onnx}: {type(e).__name__}: {e}"
            ) from e
        os.chmod(quant, default_file_mode())
        os.replace(quant, out)
    log.info("ORT quantize_static: %s -> %s (%s)", fp32_onnx, out, ", ".join(op_types))
    return out
