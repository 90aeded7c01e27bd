"""Checkpoint -> verified ONNX file. Everything is written in a temporary folder beside the destination and
moved into place only after every check passed, so a failed export never leaves a broken ``.onnx``.

The files are replaced as one unit (``io.replace_together``): external data first, under a name the current graph
does not use (``<onnx>.data``, or ``<onnx>.<id>.data`` when the current graph reads ``<onnx>.data``), then the
``.onnx`` that names it, then the report. An export stopped at any point leaves the previous graph with its own
weights; the data file only the previous graph used is deleted after the switch."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import torch
from torch import nn

from pqcad_deploy.denoiser import UNetWrapper
from pqcad_deploy.io import (
    default_file_mode,
    disk_full,
    json_writer,
    replace_together,
    require_file,
    writable_parent,
    write_failure,
)
from pqcad_deploy.loading import ModelBundle

from . import checks
from .audit import audit_model
from .int4 import rewrite_int4
from .onnx_export import (
    DTYPES,
    DYNAMO_NATIVE_OPSET,
    EXPORTERS,
    TWO_GB_PROTO,
    ExportError,
    check_opset,
    eliminate_identities,
    fix_qdq_dtypes,
    fold_constants,
    fold_weight_quantizers,
    forget_inferred_types,
    infer_types,
    initializer_bytes,
    qdq_counts,
    remove_qdq_casts,
    set_opset,
    torch_to_onnx,
)
from .spec import export_spec_for

log = logging.getLogger(__name__)

# Parameterised leaf layers the exporter knows how to place (everything else is refused by name).
SUPPORTED_LEAVES = {
    "Conv2d", "Linear", "GroupNorm", "LayerNorm", "ConvTranspose2d", "Embedding",
    "QuantConv2d", "QuantLinear", "TensorQuantizer",
}  # fmt: skip


@dataclass(frozen=True)
class ExportOptions:
    target: str | None = None  # default: the checkpoint's
    precision: str = "fp32"
    opset: int | None = None  # default: 17 (fp32), 19 (fp16), 21 (INT4 weights); at least 18 with dynamo
    batch: int = 1
    dynamic_batch: bool = True
    external_data: bool | None = None  # None: automatic above 2 GB
    check: bool = True
    parity_samples: int = 8
    strict_audit: bool = True
    exporter: str = "torchscript"  # or "dynamo" (torch.export); same post-passes and checks

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ExportError(f"exporter must be one of {list(EXPORTERS)}, got {self.exporter!r}.")
        if self.precision not in DTYPES:
            raise ExportError(f"precision must be one of {sorted(DTYPES)}, got {self.precision!r}.")
        if self.target not in (None, "tensorrt", "onnxruntime"):
            raise ExportError(f"target must be tensorrt or onnxruntime, got {self.target!r}.")


def check_supported_layers(model: nn.Module) -> None:
    bad = [
        (n, type(m).__name__)
        for n, m in model.named_modules()
        if not list(m.children())
        and any(True for _ in m.parameters(recurse=False))
        and type(m).__name__ not in SUPPORTED_LEAVES
    ]
    if bad:
        raise ExportError(
            f"Unsupported layer types: {sorted({t for _, t in bad})} (e.g. {bad[0][0]}). The exporter places "
            f"Q/DQ on {sorted(SUPPORTED_LEAVES)} only; fuse or replace those layers before export."
        )


def _quant_ctx(model: nn.Module, quantized: bool, precision: str = "fp32"):
    """A factory of the context the torch ``model`` is exported and compared under (entered once for the export
    and once per parity probe): the quantizers' export mode, with the scales rounded to FP16 for FP16 graphs (the
    graph stores FP16 scales, so the reference must use them)."""
    if not quantized:
        return contextlib.nullcontext
    from pqcad_deploy.quant import export_mode, iter_quantizers

    @contextlib.contextmanager
    def ctx():
        with export_mode(model) as m:
            if precision == "fp16":
                for _, q in iter_quantizers(m):
                    if q._export_scale is not None:
                        q._export_scale = q._export_scale.half().float()
            yield m

    return ctx


def _quant_facts(loaded: ModelBundle) -> tuple[bool, int, set[str]]:
    """(quantized?, weight bits, module scopes that carry quantizers, as they appear in the wrapper)."""
    if loaded.qcfg is None:
        return False, 32, set()
    from pqcad_deploy.quant import iter_quantizers

    scopes, bits = set(), 8
    for name, q in iter_quantizers(loaded.model):
        mod = name.rsplit(".", 1)[0] if "." in name else ""
        if name.endswith("weight_quantizer"):
            scopes.add(f"unet.{mod}" if mod else "unet")
            bits = min(bits, int(getattr(q, "num_bits", 8)))
    return True, bits, scopes


def default_opset(precision: str, quantized: bool, int4: bool) -> int:
    if int4:
        return 21
    return 19 if (precision == "fp16" and quantized) else 17


def export(loaded: ModelBundle, onnx_path: str | os.PathLike, opts: ExportOptions) -> dict:
    """Export, post-process, check and move into place. Returns the report (also written as JSON)."""
    final = Path(onnx_path)
    parent = writable_parent(final, ExportError, "choose another --onnx path")
    quantized, wbits, scopes = _quant_facts(loaded)
    ckpt_target = getattr(loaded.qcfg, "target", None)
    target = opts.target or ckpt_target or "tensorrt"
    if quantized and opts.target and ckpt_target and opts.target != ckpt_target:
        raise ExportError(
            f"The checkpoint was quantized for target {ckpt_target!r}; its Q/DQ placement cannot be re-targeted "
            f"to {opts.target!r} at export. Retarget the student (its weights kept, its quantizers rebuilt and "
            f"recalibrated, optionally fine-tuned): pqcad-train pqcad --init-student STUDENT --target {opts.target} "
            "--bits w8a8 --schedule fixed --steps 0|N --calib CALIB --out NEW, then export NEW."
        )
    int4 = quantized and wbits <= 4
    opset = opts.opset or default_opset(opts.precision, quantized, int4)
    if opts.exporter == "dynamo" and not opts.opset:
        opset = max(opset, DYNAMO_NATIVE_OPSET)  # no version conversion after torch.export
    check_opset(opset, opts.precision, quantized, int4)
    check_supported_layers(loaded.model)
    espec = export_spec_for(loaded.spec, opts.batch, opts.dynamic_batch)
    model = loaded.model if opts.precision == "fp32" else copy.deepcopy(loaded.model)  # .to() is in place
    wrapper = UNetWrapper(model).eval().to(DTYPES[opts.precision])
    ctx = _quant_ctx(model, quantized, opts.precision)
    report: dict[str, Any] = {
        "source": loaded.source,
        "model": loaded.spec.name,
        "target": target,
        "quantized": quantized,
        "weight_bits": wbits if quantized else None,
        "options": {**asdict(opts), "opset": opset, "target": target},
        "export_spec": espec.to_dict(),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{final.name}.") as tmpd:
        tmp = Path(tmpd)
        raw = tmp / "raw.onnx"
        try:
            with ctx(), torch.no_grad():
                torch_to_onnx(wrapper, espec, raw, opset, opts.precision, opts.exporter)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError, OSError) as e:
            if disk_full(parent):
                raise write_failure(final, e) from e
            raise ExportError(f"torch.onnx export failed ({opts.exporter}): {str(e).splitlines()[0]}") from e
        report["torch_export_s"] = round(time.perf_counter() - t0, 3)
        model = ir.load(raw)
        report["passes"] = post_process(model, opts.precision, opset, int4)
        out = tmp / final.name
        external = opts.external_data
        if external is None:
            external = initializer_bytes(model) >= TWO_GB_PROTO
        previous_data = _own_external_data(final)
        data_name = f"{final.name}.data"
        if data_name in previous_data:  # never overwrite what the current graph reads
            data_name = f"{final.name}.{uuid.uuid4().hex[:8]}.data"
        if not external:  # weights the exporter wrote beside raw.onnx must end up inside the file
            model = ir.external_data.load_to_model(model)
        try:
            ir.save(model, out, external_data=data_name if external else None)
        except Exception as e:  # onnx/onnx_ir raise OSError or their own types on a full disk
            if isinstance(e, OSError) or disk_full(parent):
                raise write_failure(final, e) from e
            raise
        report["export_s"] = round(time.perf_counter() - t0, 3)
        report["files"] = {"onnx": final.name, "external_data": data_name if external else None}
        report["file_bytes"] = out.stat().st_size + ((tmp / data_name).stat().st_size if external else 0)
        report["counts"] = qdq_counts(model)
        if opts.check:
            t1 = time.perf_counter()
            checks.checker(out)
            report["checker"] = "passed (full_check)"
            report["audit"] = audit_model(model, target, scopes or None)
            report["parity"] = checks.parity(
                out, wrapper, espec, opts.precision, quantized, opts.parity_samples, ctx=ctx
            )
            report["check_s"] = round(time.perf_counter() - t1, 3)
            blocked = report["audit"]["counts"]["float_blocked"]
            if quantized and blocked and opts.strict_audit:
                bad = [la for la in report["audit"]["layers"] if la["blocked"]][:3]
                raise checks.CheckError(
                    f"{blocked} layers meant to be quantized would run in float on {target}, e.g. "
                    + "; ".join(f"{la['name']}: {', '.join(la['reasons'])}" for la in bad)
                )
        report["total_s"] = round(time.perf_counter() - t0, 3)
        rep = tmp / "report.json"
        try:
            json_writer(report)(str(rep))
        except OSError as e:
            raise write_failure(report_path(final), e) from e
        staged = [(tmp / data_name, parent / data_name)] if external else []
        staged += [(out, final), (rep, report_path(final))]
        mode = default_file_mode()
        for src, _ in staged:
            os.chmod(src, mode)
        replace_together(staged)
    del model
    for name in previous_data - ({data_name} if external else set()):
        (parent / name).unlink(missing_ok=True)
    return report


def _own_external_data(onnx_path: Path) -> set[str]:
    """External data files of the graph now at ``onnx_path`` that this exporter wrote (``<name>.data`` or
    ``<name>.<id>.data`` beside it); other locations are never touched."""
    if not onnx_path.is_file():
        return set()
    try:
        m = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # an unreadable previous file is simply replaced
        return set()
    names = {
        entry.value for init in m.graph.initializer for entry in init.external_data if entry.key == "location"
    }
    prefix = f"{onnx_path.name}."
    return {
        n for n in names if n.startswith(prefix) and n.endswith(".data") and "/" not in n and "\\" not in n
    }


def post_process(model: ir.Model, precision: str, opset: int, int4: bool) -> dict[str, Any]:
    """The passes every export gets, in order; returns what each one changed (for the report)."""
    if precision != "fp32":
        infer_types(model)  # before any pass: the scale types of FP16 graphs follow the exported tensors
    passes: dict[str, Any] = {
        "identities_inlined": eliminate_identities(model),
        "constants_folded": fold_constants(model),
    }
    if precision != "fp32":
        passes["qdq_casts_removed"] = remove_qdq_casts(model)
    passes["weights_folded"] = fold_weight_quantizers(model)
    if int4:
        passes["int4"] = rewrite_int4(model)
    set_opset(model, opset)
    passes["scale_dtype_fixes"] = fix_qdq_dtypes(model, precision)
    forget_inferred_types(model)
    return passes


def report_path(onnx_path: Path) -> Path:
    return onnx_path.with_suffix(".report.json")


def check_only(onnx_path: str | os.PathLike, target: str = "tensorrt") -> dict:
    """``--check-only``: checker + audit (+ an ORT smoke run) on an existing file; no torch model is needed."""
    path = require_file(onnx_path, "--check-only", ExportError)
    checks.checker(path)
    model = ir.load(path)  # external data stays on disk: the audit reads types and small scales only
    report = {"onnx": str(path), "checker": "passed (full_check)", "counts": qdq_counts(model)}
    report["audit"] = audit_model(model, target)
    report["ort_smoke"] = checks.ort_smoke(path)
    return report
