"""Checks run on every export: ONNX checker, ONNX Runtime (CPU) parity against the torch model.

Parity tolerance, and why it is not a fixed number. A QDQ graph run by another engine rounds differently
wherever float accumulation order differs: a value sitting on a rounding boundary flips one code, and in a
deep quantized net the flips grow until the difference is the size of the quantization noise itself (a random
W8A8 UNet: ORT vs torch 0.049 rel-L2, torch at batch 8 vs batch 1 0.047, oneDNN on vs off 0.049). So the
tolerance is measured per export, from torch's disagreement with itself, and ORT may differ by
``SENSITIVITY_FACTOR`` times that, never less than a floor for the precision. The probes:

* batch N vs one sample at a time, and oneDNN off: a different accumulation order, where torch has one;
* activation jitter (quantized FP32 graphs): every activation quantizer's input is moved by up to
  ``JITTER_ULPS`` float32 ulps, the size of the difference another engine's summation order makes. This one
  does not depend on torch's kernels: single-threaded oneDNN on a Xeon is batch-invariant, so the first two
  probes saw no flip at all (4.5e-7) while ORT's MLAS GEMM differed from it by one ulp at a rounding boundary
  and the flips grew to 0.026 through a W4 tiny UNet. Without the jitter probe, the tolerance on such a model
  depended on the CPU and the thread count, not on the graph.

A real export bug (wrong axis, wrong scale, missing Q/DQ, wrong layer) moves the output by far more than the
self-disagreement and fails; an FP32 graph gets ~1e-6 and a tight floor. FP16 graphs checked on the CPU compare
against FP32 compute of the FP16 weights and inputs (torch's FP16 CPU kernels are far too slow for an SD-1.5
UNet), and their self-disagreement is the same model with every intermediate rounded to FP16, as an FP16
engine stores it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from pqcad_deploy.errors import PQCADError
from pqcad_deploy.quant.quantizer import TensorQuantizer
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner

from .spec import ExportSpec

log = logging.getLogger(__name__)

SENSITIVITY_FACTOR = 3.0
JITTER_ULPS = 4  # relative size of the activation jitter, in float32 ulps (2**-23)
# (rel-L2 floor, max-abs floor relative to max|ref|) per (precision, quantized)
FLOORS = {
    ("fp32", False): (1e-4, 1e-3),
    ("fp32", True): (2e-2, 1e-1),
    ("fp16", False): (1e-2, 5e-2),
    ("fp16", True): (3e-2, 1.5e-1),
}


class CheckError(PQCADError, RuntimeError):
    """An exported model failed a check; it is not written to the requested path."""


def checker(path: Path) -> None:
    """Full ONNX check (with shape inference). Path-based so models with external data work."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise CheckError(f"onnx.checker rejected the model: {str(e).splitlines()[0]}") from e


def ort_runner(path: Path, optimize: bool = True, threads: int = 2) -> OrtRunner:
    """The runtime's ORT runner (the one session builder): reference kernels (``optimize=False``) execute the
    Q/DQ semantics literally; ``optimize=True`` is the fused CPU path a deployment runs."""
    return OrtRunner(
        path, intra_op_threads=threads, optimization="all" if optimize else "disable", log_severity=3
    )


def compare(a: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    return {
        "rel_l2": float(np.linalg.norm(a64 - r64) / max(np.linalg.norm(r64), 1e-30)),
        "max_abs": float(np.abs(a64 - r64).max()),
        "ref_max_abs": float(np.abs(r64).max()),
    }


def _torch_run(model: torch.nn.Module, feed: dict[str, torch.Tensor], names, chunk: int) -> np.ndarray:
    n = feed[names[0]].shape[0]
    outs = []
    with torch.inference_mode():
        for i in range(0, n, chunk):
            outs.append(model(*(feed[k][i : i + chunk] for k in names)).float())
    return torch.cat(outs).numpy()


@contextlib.contextmanager
def _fp16_activations(model: torch.nn.Module):
    """Round every leaf module's float output to FP16 (FP32 compute, FP16 storage: what an FP16 engine does)."""

    def hook(_m, _inp, out):
        return out.half().float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _activation_jitter(model: torch.nn.Module, ulps: int = JITTER_ULPS, seed: int = 0):
    """Multiply each activation quantizer's input by (1 + u), |u| <= ``ulps`` float32 ulps, seeded: what a
    different accumulation order does to the values that reach a rounding decision. Weights stay exact."""
    gen = torch.Generator().manual_seed(seed)

    def jitter(_m, args):
        x = args[0]
        u = (torch.rand(x.shape, generator=gen) * 2 - 1) * (ulps * 2.0**-23)
        return (x * (1 + u.to(x.device)).to(x.dtype), *args[1:])

    handles = [
        m.register_forward_pre_hook(jitter)
        for m in model.modules()
        if isinstance(m, TensorQuantizer) and m.kind != "weight"
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def _ort_run(runner: OrtRunner, feed: dict[str, np.ndarray], n: int, chunk: int) -> np.ndarray:
    """The graph's first output on ``feed``, ``chunk`` samples per call."""
    with runner:
        outs = [
            next(
                iter(runner.infer({k: torch.from_numpy(v[i : i + chunk]) for k, v in feed.items()}).values())
            )
            for i in range(0, n, chunk)
        ]
    return np.concatenate([o.float().numpy() for o in outs])


def parity(
    path: Path,
    model: torch.nn.Module,
    espec: ExportSpec,
    precision: str,
    quantized: bool,
    n_samples: int = 8,
    seed: int = 1234,
    ctx=contextlib.nullcontext,
) -> dict:
    """ORT CPU vs the torch model on sampler-like inputs; raises :class:`CheckError` beyond tolerance.

    The gate runs ORT with graph optimisations off: its reference kernels execute the ONNX Q/DQ semantics
    literally (what TensorRT also promises), so it checks that the *graph* equals the checkpoint. The fused
    ORT_ENABLE_ALL run is reported beside it (the deployed ORT CPU path) and warns when it deviates.

    ``ctx`` is the context the torch model must run under (the quantizers' export mode)."""
    dtype = torch.float16 if precision == "fp16" else torch.float32
    chunk = n_samples if espec.dynamic_batch else espec.batch
    n = max(n_samples - n_samples % chunk, chunk)
    feed = espec.sampler_inputs(n, seed=seed, dtype=dtype)
    names = list(espec.input_names)
    on_cpu = next(model.parameters()).device.type == "cpu"
    reference = "torch, export precision"
    with ctx():
        probes: dict[str, dict[str, float]] = {}  # torch vs itself, by what was changed
        if dtype == torch.float16 and on_cpu:
            # torch has no fast FP16 CPU kernels (one SD-1.5 UNet call ran over 30 min on 2 cores). Reference: the FP16
            # weights and inputs computed in FP32, which is what FP16 engines do (FP32 accumulation).
            reference = (
                "torch FP32 compute of the FP16 weights and inputs (torch CPU has no fast FP16 kernels)"
            )
            run_model = copy.deepcopy(model).float()
            feed = {k: v.float() if v.is_floating_point() else v for k, v in feed.items()}
            ref = _torch_run(run_model, feed, names, chunk)
            with _fp16_activations(run_model):  # the sensitivity to FP16 intermediates sets the tolerance
                probes["fp16_intermediates"] = compare(_torch_run(run_model, feed, names, chunk), ref)
        else:
            run_model = model
            ref = _torch_run(model, feed, names, chunk)
        if chunk > 1:
            probes["one_sample_at_a_time"] = compare(_torch_run(run_model, feed, names, 1), ref)
        if dtype == torch.float32:
            with torch.backends.mkldnn.flags(enabled=False):
                probes["onednn_off"] = compare(_torch_run(model, feed, names, chunk), ref)
        elif not on_cpu:  # FP16 on GPU: engines accumulate in FP32 where torch may not
            m32 = copy.deepcopy(model).float()
            f32 = {k: v.float() if v.is_floating_point() else v for k, v in feed.items()}
            probes["fp32_compute"] = compare(_torch_run(m32, f32, names, chunk), ref)
            del m32
        if quantized and dtype == torch.float32:  # FP16: the FP16 rounding probe moves values far more
            with _activation_jitter(run_model):
                probes["activation_jitter"] = compare(_torch_run(run_model, feed, names, chunk), ref)
        del run_model
    feed = {k: v.to(dtype) if v.is_floating_point() else v for k, v in feed.items()}
    np_feed = {k: v.numpy() for k, v in feed.items()}
    self_rel = max((d["rel_l2"] for d in probes.values()), default=0.0)  # none: the floors alone decide
    self_abs = max((d["max_abs"] for d in probes.values()), default=0.0)
    floor_rel, floor_abs = FLOORS[(precision, quantized)]
    tol_rel = max(floor_rel, SENSITIVITY_FACTOR * self_rel)
    tol_abs = max(floor_abs * float(np.abs(ref).max()), SENSITIVITY_FACTOR * self_abs)
    res = compare(_ort_run(ort_runner(path, optimize=False), np_feed, n, chunk), ref)
    fused = compare(_ort_run(ort_runner(path, optimize=True), np_feed, n, chunk), ref)
    fused["passed"] = bool(fused["rel_l2"] <= tol_rel and fused["max_abs"] <= tol_abs)
    out = {
        **res,
        "samples": n,
        "reference": reference,
        "torch_self_rel_l2": self_rel,
        "torch_self_max_abs": self_abs,
        "torch_self_probes": {k: d["rel_l2"] for k, d in probes.items()},
        "tol_rel_l2": tol_rel,
        "tol_max_abs": tol_abs,
        "passed": bool(res["rel_l2"] <= tol_rel and res["max_abs"] <= tol_abs),
        "ort_enable_all": fused,
    }
    log.info(
        "ORT parity (reference kernels): rel-L2 %.3g (tol %.3g, torch self %.3g), max-abs %.3g (tol %.3g); "
        "ORT_ENABLE_ALL (fused kernels): rel-L2 %.3g",
        res["rel_l2"], tol_rel, self_rel, res["max_abs"], tol_abs, fused["rel_l2"],
    )  # fmt: skip
    if not out["passed"]:
        raise CheckError(
            f"ONNX Runtime output differs from torch beyond tolerance: rel-L2 {res['rel_l2']:.4g} "
            f"(tolerance {tol_rel:.4g}), max-abs {res['max_abs']:.4g} (tolerance {tol_abs:.4g}); torch vs itself "
            f"{self_rel:.4g}. The graph does not compute what the checkpoint does."
        )
    if not fused["passed"]:
        log.warning(
            "ORT_ENABLE_ALL (fused integer kernels) differs from torch by rel-L2 %.3g (tolerance %.3g) although "
            "the graph itself matches. Known cause on x86: ORT's u8s8 QLinearConv/MatMulInteger kernels sum "
            "pairs of u8*s8 products in int16 and saturate when weight codes use the full 8-bit range "
            "(7-bit weights avoid it). TensorRT does not share this.",
            fused["rel_l2"], tol_rel,
        )  # fmt: skip
    return out


def ort_smoke(path: Path, batch: int = 2, seed: int = 0) -> dict:
    """Run ORT once on random inputs shaped from the graph's own inputs (dynamic dims -> ``batch``)."""
    rng = np.random.default_rng(seed)
    with ort_runner(path) as runner:
        feed = {}
        for i in runner.session.get_inputs():
            shape = [d if isinstance(d, int) else batch for d in i.shape]
            if "int64" in i.type:
                feed[i.name] = torch.from_numpy(rng.integers(0, 1000, shape).astype(np.int64))
            else:
                dt = np.float16 if "float16" in i.type else np.float32
                feed[i.name] = torch.from_numpy(rng.standard_normal(shape).astype(dt))
        out = next(iter(runner.infer(feed).values())).float()
    if not torch.isfinite(out).all():
        raise CheckError(f"{path}: ONNX Runtime produced non-finite outputs on random inputs.")
    return {"passed": True, "output_shape": list(out.shape)}
