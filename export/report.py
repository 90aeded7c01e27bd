"""Readable tables from an export report (the JSON beside the model holds the same data)."""

from __future__ import annotations


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MB"


def audit_table(audit: dict, only_problems: bool = False) -> str:
    rows = [("layer", "op", "runs", "why not quantized")]
    for la in audit["layers"]:
        if only_problems and not la.get("blocked"):
            continue
        runs = la["status"].upper() if la["status"] != "float" else "float"
        if la["status"] == "int4" and la.get("weight_dtype"):
            runs = "INT4 (weights)"
        rows.append((la["name"], la["op"], runs, "; ".join(la["reasons"])))
    if len(rows) == 1:
        rows = []
    widths = [min(max((len(r[i]) for r in rows), default=0), 70) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w)[:w] for c, w in zip(r[:3], widths, strict=True)) + ("  " + r[3] if r[3] else "")
        for r in rows
    ]
    c = audit["counts"]
    lines.append(
        f"-- {audit['target']} audit: {c['int8']} INT8, {c['int4']} INT4, {c['float_by_design']} float by design, "
        f"{c['float_blocked']} float BLOCKED, {c['total']} Conv/Gemm/MatMul total"
    )
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    p = report.get("parity") or {}
    c = report.get("counts", {})
    rows = [
        ("model", f"{report.get('model')} ({report.get('source')})"),
        ("target / precision / opset", f"{report['target']} / {report['options']['precision']} / "
         f"{report['options']['opset']}"),
        ("quantized", f"W{report['weight_bits']}A8" if report.get("quantized") else "no (FP)"),
        ("file size", _mb(report.get("file_bytes"))
         + (f" (+ external data {report['files']['external_data']})" if report["files"].get("external_data")
            else "")),
        ("nodes / Q / DQ", f"{c.get('nodes')} / {c.get('QuantizeLinear')} / {c.get('DequantizeLinear')}"),
        ("INT8 / INT4 weight initializers",
         f"{c.get('int8_weight_initializers')} / {c.get('int4_weight_initializers')}"),
        ("export time", f"{report.get('export_s')} s (torch trace {report.get('torch_export_s')} s)"),
        ("checker", report.get("checker", "not run")),
    ]  # fmt: skip
    if p:
        rows.append(
            (
                "ORT parity",
                f"rel-L2 {p['rel_l2']:.3g} (tol {p['tol_rel_l2']:.3g}; torch self {p['torch_self_rel_l2']:.3g}), "
                f"max-abs {p['max_abs']:.3g} (tol {p['tol_max_abs']:.3g}) -> {'PASS' if p['passed'] else 'FAIL'}",
            )
        )
        f = p.get("ort_enable_all")
        if f:
            rows.append(
                (
                    "ORT_ENABLE_ALL (fused)",
                    f"rel-L2 {f['rel_l2']:.3g}, max-abs {f['max_abs']:.3g} -> "
                    + ("within tolerance" if f["passed"] else "OUTSIDE tolerance (see warning)"),
                )
            )
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def full_report(report: dict, verbose: bool = False) -> str:
    parts = [summary_table(report)]
    if "audit" in report:
        parts.append(audit_table(report["audit"], only_problems=not verbose))
    return "\n\n".join(parts)
