"""The text encoder of a text-to-image model -> ONNX: ``input_ids``, ``attention_mask`` (int64 [B, L]) ->
``last_hidden_state`` [B, L, D], checked like every export and stamped with the encoder's fingerprint.

The graph holds the whole frozen BERT; its inputs are what ``TextEncoder.tokenize`` gives, so any runtime with the
encoder's ``tokenizer.json`` can feed it (the torch-free Jetson demo does). The fingerprint, token count and width go
into the ONNX metadata, so a pipeline refuses an encoder engine that is not the one its UNet was trained on.

``int8``: ONNX Runtime's dynamic quantization of the MatMul weights (activations quantized per call). It is kept
only when its states match the FP32 graph's (relative L2 <= ``INT8_MAX_REL_L2``) and it runs faster on this CPU;
the report says which and why, so nothing slower or less faithful ships by accident.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pqcad_deploy.captions import evaluation_prompts
from pqcad_deploy.io import atomic_json_save, default_file_mode, replace_together, writable_parent
from pqcad_deploy.runtime.backends.ort_backend import OrtRunner
from pqcad_deploy.text import TextEncoder, load_text_encoder

from .checks import CheckError, checker, compare

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"
OPSET = 17
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # rel-L2 of ORT against torch FP32 states
INT8_MAX_REL_L2 = 2e-2
TIMING_BATCH, TIMING_REPEATS = 8, 20
META_KEYS = ("pqcad.encoder_fingerprint", "pqcad.max_length", "pqcad.hidden_size")


class _EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_text_encoder(
    source: str | os.PathLike | None,
    onnx_path: str | os.PathLike,
    precision: str = "fp32",
    int8: bool = False,
    check: bool = True,
    parity_samples: int = 8,
) -> dict[str, Any]:
    """Export, check, time and (optionally) quantize; files move into place only after every check passed."""
    encoder = load_text_encoder(source)
    final = Path(onnx_path)
    parent = writable_parent(final, CheckError, "choose another --onnx path")
    prompts = list(evaluation_prompts("seen", max(parity_samples, TIMING_BATCH), seed=0).prompts)
    report: dict[str, Any] = {
        "source": str(encoder.source),
        "onnx": str(final),
        "precision": precision,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "max_length": encoder.max_length,
        "hidden_size": encoder.hidden_size,
        "encoder_fingerprint": encoder.fingerprint,
        "timing_batch": TIMING_BATCH,
    }
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{final.name}.") as tmpd:
        out = Path(tmpd) / final.name
        t0 = time.perf_counter()
        _export(encoder, out, precision)
        report["export_s"] = round(time.perf_counter() - t0, 2)
        if check:
            checker(out)
        parity_prompts = prompts[:parity_samples] if check else None
        fp32_states, report["ms_per_batch"], report["parity"] = _measure(
            out, encoder, prompts[:TIMING_BATCH], parity_prompts, TOLERANCE[precision]
        )
        moves = [(out, final)]
        if int8:
            name = f"{final.stem}_int8{final.suffix}"
            variant, path = _int8_variant(
                encoder, out, Path(tmpd) / name, prompts[:TIMING_BATCH], fp32_states, report
            )
            report["variants"] = {name: variant}
            if variant["kept"]:
                moves.append((path, parent / name))
        report["file_bytes"] = out.stat().st_size
        for src, _ in moves:
            os.chmod(src, default_file_mode())
        replace_together(moves)  # the encoder and its INT8 variant as one unit
    atomic_json_save(report, final.with_suffix(".report.json"))
    return report


def _export(encoder: TextEncoder, path: Path, precision: str) -> None:
    graph = _EncoderGraph(encoder.model).eval().to(torch.float16 if precision == "fp16" else torch.float32)
    feed = encoder.tokenize(["a photo of a red dress", ""])
    dyn = {n: {0: "B"} for n in (*INPUTS, OUTPUT)}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            tuple(feed[n] for n in INPUTS),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=dyn,
        )
    model = onnx.load(str(path))
    values = (encoder.fingerprint, str(encoder.max_length), str(encoder.hidden_size))
    onnx.helper.set_model_props(model, dict(zip(META_KEYS, values, strict=True)))
    onnx.save(model, str(path))


def _measure(
    path: Path, encoder: TextEncoder, prompts: list[str], parity_prompts: list[str] | None, tol: float
) -> tuple[np.ndarray, float, dict[str, Any] | None]:
    """One ORT session: (states of ``prompts``, median ms per batch of them, parity against torch or None)."""
    feed = encoder.tokenize(prompts)
    with OrtRunner(path, intra_op_threads=torch.get_num_threads()) as r:
        parity = None
        if parity_prompts is not None:
            got = r.infer(encoder.tokenize(parity_prompts))[OUTPUT].float().numpy()
            parity = _parity(got, encoder.encode(parity_prompts).float().numpy(), len(parity_prompts), tol)
        states = r.infer(feed)[OUTPUT].float().numpy()
        times = []
        for _ in range(TIMING_REPEATS):
            r.infer(feed)
            times.append(r.last_inference_ms)
    return states, float(np.median(times)), parity


def _parity(got: np.ndarray, ref: np.ndarray, n: int, tol: float) -> dict[str, Any]:
    res = compare(got, ref)
    res.update({"tol": tol, "prompts": n, "passed": bool(res["rel_l2"] <= tol)})
    if not res["passed"]:
        raise CheckError(
            f"ONNX Runtime text states differ from torch: rel-L2 {res['rel_l2']:.3g} (tolerance {tol:g}); the graph "
            "does not compute what the encoder does."
        )
    return res


def _int8_variant(
    encoder: TextEncoder,
    fp32: Path,
    out: Path,
    prompts: list[str],
    fp32_states: np.ndarray,
    report: dict[str, Any],
) -> tuple[dict[str, Any], Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
    model = onnx.load(str(out))
    values = (report["encoder_fingerprint"], str(report["max_length"]), str(report["hidden_size"]))
    onnx.helper.set_model_props(model, dict(zip(META_KEYS, values, strict=True)))
    onnx.save(model, str(out))
    states, ms, _ = _measure(out, encoder, prompts, None, 0.0)
    rel = compare(states, fp32_states)["rel_l2"]
    faster, faithful = ms < report["ms_per_batch"], rel <= INT8_MAX_REL_L2
    why = (
        ""
        if faster and faithful
        else ("slower than FP32" if not faster else f"rel-L2 {rel:.3g} > {INT8_MAX_REL_L2}")
    )
    return {
        "file_bytes": out.stat().st_size,
        "rel_l2_vs_fp32": rel,
        "ms_per_batch": ms,
        "kept": faster and faithful,
        "why": why,
    }, out


def read_encoder_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The encoder fingerprint, token count and width stamped into an exported text encoder (empty if absent)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return {k.split(".", 1)[1]: props[k] for k in META_KEYS if k in props}
