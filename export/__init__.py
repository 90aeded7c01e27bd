"""ONNX export with explicit quantization (Q/DQ), INT4 rewrite, checks and TensorRT audit."""
