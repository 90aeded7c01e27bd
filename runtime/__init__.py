"""Backends (torch, onnxruntime, tensorrt), engine builds, sampler benchmarks, Jetson demo."""
