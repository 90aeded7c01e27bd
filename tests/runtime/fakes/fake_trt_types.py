"""Enums, logger and host-memory types of the fake TensorRT (see fake_tensorrt.py)."""

from __future__ import annotations

import enum

import numpy as np
import onnx

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
CACHE_MAGIC = b"FAKE-TIMING-CACHE\n"

DataType = enum.IntEnum("DataType", "FLOAT HALF INT8 INT32 BOOL UINT8 BF16 INT64", start=0)
NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_}
NP_TYPES |= {"UINT8": np.uint8, "INT64": np.int64}
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "FLOAT",
    onnx.TensorProto.FLOAT16: "HALF",
    onnx.TensorProto.INT64: "INT64",
}
ONNX_TYPES |= {onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT8: "INT8"}
LayerType = enum.IntEnum(
    "LayerType", "CONVOLUTION MATRIX_MULTIPLY QUANTIZE DEQUANTIZE ELEMENTWISE SHAPE", start=0
)
LAYER_OF_OP = {"Conv": "CONVOLUTION", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY"}
LAYER_OF_OP |= {"QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE"}
TensorIOMode = enum.IntEnum("TensorIOMode", "NONE INPUT OUTPUT", start=0)
ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED", start=0)
MemoryPoolType = enum.IntEnum(
    "MemoryPoolType",
    "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM DLA_GLOBAL_DRAM TACTIC_SHARED_MEMORY",
    start=0,
)
LayerInformationFormat = enum.IntEnum("LayerInformationFormat", "ONELINE JSON", start=0)
DeviceType = enum.IntEnum("DeviceType", "GPU DLA", start=0)
OnnxParserFlag = enum.IntEnum("OnnxParserFlag", "NATIVE_INSTANCENORM", start=0)
Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)


class HostMemory(bytes):
    """``trt.IHostMemory``: bytes-like, and a context manager as Polygraphy uses it."""

    def __enter__(self) -> HostMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ILogger:
    def __init__(self) -> None:
        pass

    def log(self, severity: Severity, msg: str) -> None:
        pass


class Logger(ILogger):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity

    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity
