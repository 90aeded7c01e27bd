"""Layer-wise accuracy debugger for QDQ ONNX models: which quantized layers cause the final error.

Works on any QDQ file (this project's exports, ONNX Runtime ``quantize_static`` output, modelopt output) given the
float ONNX of the same network. A layer's *contribution* is the share of the final output's squared error (rel-L2
against the FP graph on sampler-like feeds at the chosen timesteps) that disappears when only that layer's
quantization is removed from the quantized graph: exactly what putting it on an exclude list buys, measured with
the rest of the network still quantized. Its *local* error (rel-L2 of its own output against the matching FP
layer, both graphs run on the same feeds) is reported beside it; local errors accumulate downstream, so they point
at where error is visible, not where it is caused. The suggested exclude list is built greedily in rank order,
keeping a layer only when excluding it together with those already kept cuts the joint error.

Ownership of quantizers (each Q/DQ pair is charged to one layer): weight and bias DQs belong to their consumer; an
activation Q/DQ whose input is the output of a quantized Conv/Gemm/MatMul is that layer's output quantizer (ORT's
DQ->op->Q unit, a TensorRT ``conv_shortcut`` skip Q); any other activation Q/DQ belongs to each consumer edge
separately (a shared q/k/v input Q is split among to_q/to_k/to_v). Removing a layer's quantization rewires those
edges to the float tensor and restores the FP graph's weights.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from pqcad_deploy.denoiser import COND, SAMPLE, TIMESTEP, sampler_feed
from pqcad_deploy.errors import PQCADError
from pqcad_deploy.io import atomic_write

log = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_PASS_THROUGH = ("Identity", "Cast")
DEBUG_TIMESTEPS = (999, 500, 50)  # the feeds every debugger run compares on: early, middle and late denoising
MATCH_MIN_COSINE = 0.9  # a dequantized weight and its FP original are near-parallel even with a wrong scale


class DebugError(PQCADError, ValueError):
    """The models cannot be compared (missing file, no Q/DQ, graphs of different networks)."""


# ---------------------------------------------------------------- feeds
def timestep_feeds(
    shapes: dict[str, tuple[int, ...]], timesteps: Sequence[int], seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """One sampler-like feed per timestep (:func:`sampler_feed` latents/encoder states, every row at ``t``), seeded
    per timestep so the FP and the quantized model, ONNX and torch, all see the same inputs."""
    feeds = []
    for k, t in enumerate(timesteps):
        feed = sampler_feed(shapes, seed=seed + k)
        if TIMESTEP in feed:
            feed[TIMESTEP] = torch.full_like(feed[TIMESTEP], int(t))
        feeds.append(feed)
    return feeds


def graph_input_shapes(model: ir.Model, batch: int, path: Path) -> dict[str, tuple[int, ...]]:
    """Input shapes of an exported UNet with the (symbolic) batch dimension set to ``batch``."""
    shapes = {}
    for v in model.graph.inputs:
        if v.name not in (SAMPLE, TIMESTEP, COND):
            raise DebugError(
                f"{path}: input {v.name!r} is not one of the UNet inputs {SAMPLE}, {TIMESTEP}, {COND}; the "
                "debugger feeds sampler-like inputs by those names."
            )
        dims = list(v.shape.dims) if v.shape is not None else []
        if not dims and v.name != TIMESTEP:
            raise DebugError(
                f"{path}: input {v.name!r} has no shape; export with static non-batch dimensions."
            )
        out = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                out.append(batch if i == 0 and v.name == TIMESTEP else d)
            elif i == 0:
                out.append(batch)
            else:
                raise DebugError(
                    f"{path}: input {v.name!r} has a symbolic dimension {i} ({d}); only the batch may be."
                )
        shapes[v.name] = tuple(out) if out else (batch,)
    if SAMPLE not in shapes:
        raise DebugError(f"{path} has no {SAMPLE!r} input; it is not an exported UNet.")
    return shapes


# ---------------------------------------------------------------- graph analysis
def _attr(node: ir.Node, name: str, default: Any) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _const(v: ir.Value | None, depth: int = 0) -> tuple[np.ndarray, bool] | None:
    """The constant a value holds (walking back through Transpose/Reshape/Cast/DQ), and whether a DequantizeLinear
    was on the way; None when it depends on graph inputs."""
    if v is None or depth > 8:
        return None
    if v.const_value is not None:
        return np.asarray(v.const_value.numpy()), False
    p = v.producer()
    if p is None:
        return None
    if p.op_type == "Constant":
        t = p.attributes.get("value")
        return (np.asarray(t.value.numpy()), False) if t is not None else None
    if p.op_type in _PASS_THROUGH:
        return _const(p.inputs[0], depth + 1)
    if p.op_type == "Transpose":
        a = _const(p.inputs[0], depth + 1)
        if a is None:
            return None
        perm = _attr(p, "perm", None)
        return np.transpose(a[0], perm if perm is None else list(perm)), a[1]
    if p.op_type == "Reshape":
        a, s = _const(p.inputs[0], depth + 1), _const(p.inputs[1], depth + 1)
        if a is None or s is None:
            return None
        shape = [a[0].shape[i] if d == 0 else int(d) for i, d in enumerate(s[0].tolist())]
        return a[0].reshape(shape), a[1]
    if (
        p.op_type == "QuantizeLinear"
    ):  # a float weight fake-quantized in the graph (modelopt): its float value
        return _const(p.inputs[0], depth + 1)
    if p.op_type == "DequantizeLinear":
        x = _const(p.inputs[0], depth + 1)
        s = _const(p.inputs[1], depth + 1)
        if x is None or s is None:
            return None
        zp_c = _const(p.inputs[2], depth + 1) if len(p.inputs) > 2 else None
        if x[0].dtype.kind == "f":  # Q of a float constant: keep the float
            return x[0].astype(np.float32), True
        return _dequantize(p, x[0], s[0], zp_c[0] if zp_c is not None else None), True
    return None


def _dequantize(node: ir.Node, x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    xf = x.astype(np.float32)
    zf = np.zeros((), np.float32) if zp is None else zp.astype(np.float32)
    sf = scale.astype(np.float32)
    if sf.ndim == 0 or sf.size == 1:
        return (xf - zf) * sf.reshape(())
    axis = _attr(node, "axis", 1) % x.ndim
    block = _attr(node, "block_size", 0)
    if block:
        sf = np.repeat(sf, block, axis=axis)[tuple(slice(0, n) for n in x.shape)]
        zf = np.repeat(zf, block, axis=axis)[tuple(slice(0, n) for n in x.shape)] if zf.ndim else zf
        return (xf - zf) * sf
    shape = [1] * x.ndim
    shape[axis] = -1
    return (xf - (zf.reshape(shape) if zf.ndim else zf)) * sf.reshape(shape)


def _act_pair(v: ir.Value) -> tuple[ir.Node, ir.Node] | None:
    """(Q, DQ) when ``v`` is the output of an activation DequantizeLinear fed by a QuantizeLinear."""
    dq = v.producer()
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
    if q is None or q.op_type != "QuantizeLinear" or _const(q.inputs[0]) is not None:
        return None
    return q, dq


@dataclass
class Layer:
    """A unit whose quantization can be removed: a node, the input edges and output Q/DQ pairs it owns."""

    index: int  # node position in the quantized graph (names may be empty or repeated in other tools' files)
    name: str
    op_type: str
    act_inputs: list[int] = field(default_factory=list)
    const_inputs: list[int] = field(default_factory=list)
    output_dqs: list[int] = field(default_factory=list)  # indices of the DQ nodes of its output quantizers
    fp_index: int | None = None
    fp_name: str | None = None
    match: str | None = None  # how it was matched to the FP graph

    def quantizers(self) -> list[str]:
        return (
            [f"act:{i}" for i in self.act_inputs]
            + [f"const:{i}" for i in self.const_inputs]
            + ["out"] * bool(self.output_dqs)
        )

    @property
    def module(self) -> str:
        """The torch module path where the node name carries one (``/unet/a/b/Conv`` -> ``a.b``)."""
        name = self.fp_name or self.name
        parts = [p for p in name.split("/") if p][:-1]
        if parts and parts[0] == "unet":
            parts = parts[1:]
        return ".".join(parts) or name


def _node_name(node: ir.Node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def find_layers(model: ir.Model) -> list[Layer]:
    """Every unit of quantization in a QDQ graph, in graph order (see the module docstring for ownership)."""
    nodes = list(model.graph)
    pos = {id(n): i for i, n in enumerate(nodes)}
    layers: dict[int, Layer] = {}

    def layer(i: int) -> Layer:
        if i not in layers:
            layers[i] = Layer(i, _node_name(nodes[i], i), nodes[i].op_type)
        return layers[i]

    quantized_compute = set()
    for i, node in enumerate(nodes):
        if node.op_type in COMPUTE_OPS and any(
            v is not None and (_act_pair(v) or ((c := _const(v)) is not None and c[1])) for v in node.inputs
        ):
            quantized_compute.add(i)
    for i, node in enumerate(nodes):
        if node.op_type in _QDQ:
            continue
        for k, v in enumerate(node.inputs):
            if v is None:
                continue
            pair = _act_pair(v)
            if pair is not None:
                src = _compute_source(pair[0].inputs[0], pos, quantized_compute)
                if src is not None:
                    owner = layer(src)
                    if pos[id(pair[1])] not in owner.output_dqs:
                        owner.output_dqs.append(pos[id(pair[1])])
                else:
                    layer(i).act_inputs.append(k)
            elif i in quantized_compute:
                c = _const(v)
                if c is not None and c[1]:
                    layer(i).const_inputs.append(k)
    return [layers[i] for i in sorted(layers)]


def _compute_source(x: ir.Value, pos: dict[int, int], quantized_compute: set[int]) -> int | None:
    """The quantized compute node whose output ``x`` is, directly or after its bias Add (a Linear exports as
    MatMul + Add)."""
    p = x.producer()
    if p is not None and p.op_type == "Add":
        other = [v for v in p.inputs if v is not None and _const(v) is None]
        p = other[0].producer() if len(other) == 1 else None
    return pos[id(p)] if p is not None and pos[id(p)] in quantized_compute else None


def _weight_input(node: ir.Node) -> int | None:
    """Index of the weight operand of a compute node (MatMul: whichever side is constant)."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return 1
    for k in (1, 0):
        if len(node.inputs) > k and _const(node.inputs[k]) is not None:
            return k
    return None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    den = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / den) if den > 0 else 0.0


def match_layers(layers: list[Layer], qmodel: ir.Model, fpmodel: ir.Model) -> None:
    """Find each layer's FP node: weighted layers by their weight values (dequantized vs float, cosine similarity:
    name-independent, so files written by other tools match, and a wrong scale does not break it); weightless ones
    (attention BMMs, residual Adds) by node name and op type."""
    qnodes, fnodes = list(qmodel.graph), list(fpmodel.graph)
    fp_weights: dict[int, np.ndarray] = {}
    for j, n in enumerate(fnodes):
        if n.op_type in COMPUTE_OPS and (k := _weight_input(n)) is not None:
            c = _const(n.inputs[k])
            if c is not None:
                fp_weights[j] = c[0]
    scored = []
    for li, la in enumerate(layers):
        node = qnodes[la.index]
        k = _weight_input(node) if node.op_type in COMPUTE_OPS else None
        c = _const(node.inputs[k]) if k is not None and k < len(node.inputs) else None
        if c is None:
            continue
        for j, w in fp_weights.items():
            if fnodes[j].op_type == node.op_type and w.shape == c[0].shape:
                scored.append((_cosine(c[0], w), li, j))
    taken: set[int] = set()
    for score, li, j in sorted(scored, key=lambda s: -s[0]):
        la = layers[li]
        if score < MATCH_MIN_COSINE or la.fp_index is not None or j in taken:
            continue
        la.fp_index, la.fp_name, la.match = j, _node_name(fnodes[j], j), f"weights (cos {score:.3f})"
        taken.add(j)
    by_name: dict[tuple[str, str], int] = {}
    for j, n in enumerate(fnodes):
        if n.name and j not in taken:
            by_name.setdefault((n.name, n.op_type), j)
    for la in layers:
        if la.const_inputs:  # a weighted layer whose weights match nothing is not the same layer
            continue
        if la.fp_index is None and (j := by_name.get((qnodes[la.index].name, la.op_type))) is not None:
            la.fp_index, la.fp_name, la.match = j, fnodes[j].name, "node name"
            taken.add(j)


# ---------------------------------------------------------------- graph variants
def load_model(path: str | os.PathLike, what: str) -> ir.Model:
    p = Path(path)
    if not p.is_file():
        raise DebugError(f"{what} {p} does not exist" + (" (it is a directory)" if p.is_dir() else "") + ".")
    try:
        model = ir.load(p)
        return ir.external_data.load_to_model(model)
    except Exception as e:  # onnx/protobuf raise DecodeError, ValueError, ...
        raise DebugError(f"{what} {p} is not a readable ONNX model ({type(e).__name__}: {e}).") from e


def remove_quantization(
    qpath: Path, layers: Iterable[Layer], fp_consts: dict[tuple[int, int], np.ndarray]
) -> ir.Model:
    """A fresh copy of the quantized graph with the given layers' quantization removed (see module docstring)."""
    model = ir.load(qpath)
    model = ir.external_data.load_to_model(model)
    nodes = list(model.graph)
    for la in layers:
        node = nodes[la.index]
        for k in la.act_inputs:
            q, _ = _act_pair(node.inputs[k])
            node.replace_input_with(k, q.inputs[0])
        for k in la.const_inputs:
            value = fp_consts.get((la.index, k))
            if value is None:
                value = _const(node.inputs[k])[0]  # no FP original: the dequantized value, in float
            init = ir.Value(
                name=f"{_node_name(node, la.index)}_float_input_{k}", const_value=ir.tensor(value)
            )
            model.graph.register_initializer(init)
            node.replace_input_with(k, init)
        for d in la.output_dqs:
            dq = nodes[d]
            if not dq.outputs[0].is_graph_output():
                dq.outputs[0].replace_all_uses_with(dq.inputs[0].producer().inputs[0])
    return model


def fp_constants(
    layers: list[Layer], qmodel: ir.Model, fpmodel: ir.Model
) -> dict[tuple[int, int], np.ndarray]:
    """FP originals of the constants the layers dequantize (weights, int32 biases), in the consumer's layout."""
    qnodes, fnodes = list(qmodel.graph), list(fpmodel.graph)
    out = {}
    for la in layers:
        if la.fp_index is None:
            continue
        for k in la.const_inputs:
            fnode = fnodes[la.fp_index]
            c = _const(fnode.inputs[k]) if k < len(fnode.inputs) else None
            q = _const(qnodes[la.index].inputs[k])
            if c is not None and q is not None and c[0].shape == q[0].shape:
                out[(la.index, k)] = c[0].astype(np.float32)
    return out


def _save(model: ir.Model, folder: Path, name: str) -> Path:
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)
    path = folder / name
    ir.save(model, path)
    return path


# ---------------------------------------------------------------- running
def run_feeds(
    path: Path,
    feeds: list[dict[str, torch.Tensor]],
    threads: int,
    outputs: Sequence[str] | None = None,
    fused: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Run a model on every feed through the runtime's ORT runner: reference kernels by default (the Q/DQ
    arithmetic as written, which is also what TensorRT executes, and 5x faster to load), or ORT's fused CPU
    kernels (``fused``)."""
    from .checks import ort_runner

    results = []
    with ort_runner(path, optimize=fused, threads=threads) as runner:
        for feed in feeds:
            out = runner.infer(feed)
            results.append({k: v.numpy() for k, v in out.items() if outputs is None or k in outputs})
    return results


def rel_l2(a: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """rel-L2 over several arrays taken together (float64)."""
    num = sum(
        float(np.sum((x.astype(np.float64) - r.astype(np.float64)) ** 2)) for x, r in zip(a, ref, strict=True)
    )
    den = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    return float(np.sqrt(num / max(den, 1e-30)))


def error_removed(base: float, without: float) -> float:
    """Share of the squared final error that goes away (negative: removing the quantization made it worse)."""
    return 1.0 - (without / base) ** 2 if base > 0 else 0.0


def greedy_exclude(
    ranked: Sequence[str],
    evaluate: Callable[[list[str]], float],
    base: float,
    max_layers: int = 5,
    target: float | None = None,
    min_gain: float = 0.05,
) -> dict[str, Any]:
    """Walk the ranking; keep a layer when excluding it with those kept cuts the joint error by ``min_gain`` (a
    fraction of the current error). Stops at ``max_layers`` kept, at ``target`` rel-L2, or after 2 * max_layers
    tries."""
    kept: list[str] = []
    err = base
    tries = 0
    for name in ranked:
        if len(kept) >= max_layers or (target is not None and err <= target) or tries >= 2 * max_layers:
            break
        tries += 1
        e = evaluate([*kept, name])
        if e <= err * (1 - min_gain):
            kept.append(name)
            err = e
    return {"layers": kept, "rel_l2_after": err, "target": target, "max_layers": max_layers}


def final_error(
    quant_onnx: str | os.PathLike,
    fp_onnx: str | os.PathLike,
    timesteps: Sequence[int] = DEBUG_TIMESTEPS,
    batch: int = 2,
    seed: int = 0,
    threads: int = 2,
    fused: bool = False,
) -> float:
    """The final output's rel-L2 against the FP graph on :func:`debug_onnx`'s feeds, without the layer sweep (the
    ``final_rel_l2`` of its report)."""
    qpath = Path(quant_onnx)
    qmodel = load_model(qpath, "quantized model")
    out_name = qmodel.graph.outputs[0].name
    feeds = timestep_feeds(graph_input_shapes(qmodel, batch, qpath), timesteps, seed)
    q, f = (run_feeds(Path(p), feeds, threads, [out_name], fused) for p in (qpath, fp_onnx))
    return rel_l2([r[out_name] for r in q], [r[out_name] for r in f])


def debug_onnx(
    quant_onnx: str | os.PathLike,
    fp_onnx: str | os.PathLike,
    timesteps: Sequence[int] = DEBUG_TIMESTEPS,
    batch: int = 2,
    seed: int = 0,
    threads: int = 2,
    max_exclude: int = 5,
    target: float | None = None,
    fused: bool = False,
) -> dict[str, Any]:
    """Compare a QDQ model with its FP original layer by layer; returns the report (see :func:`format_table`)."""
    qpath, fpath = Path(quant_onnx), Path(fp_onnx)
    qmodel, fpmodel = load_model(qpath, "quantized model"), load_model(fpath, "FP model")
    n_q = sum(n.op_type in _QDQ for n in qmodel.graph)
    if n_q == 0:
        raise DebugError(f"{qpath} has no QuantizeLinear/DequantizeLinear nodes; it is not a QDQ model.")
    if any(n.op_type in _QDQ for n in fpmodel.graph):
        raise DebugError(
            f"{fpath} (the FP reference) holds Q/DQ nodes; give the float export of the same network."
        )
    q_in = {v.name: v.dtype for v in qmodel.graph.inputs}
    f_in = {v.name: v.dtype for v in fpmodel.graph.inputs}
    q_out, f_out = [v.name for v in qmodel.graph.outputs], [v.name for v in fpmodel.graph.outputs]
    if q_in != f_in or q_out != f_out:
        raise DebugError(
            f"The FP and quantized graphs do not match: inputs {sorted(f_in)} / {sorted(q_in)}, outputs {f_out} / "
            f"{q_out}; export both from the same network."
        )
    layers = find_layers(qmodel)
    if not layers:
        raise DebugError(f"{qpath} has Q/DQ nodes but no quantized layer (no DQ feeds any node).")
    match_layers(layers, qmodel, fpmodel)
    weighted = [la for la in layers if la.const_inputs]
    unmatched = [la.name for la in weighted if la.fp_index is None]
    if weighted and len(unmatched) > len(weighted) // 2:
        raise DebugError(
            f"The FP and quantized graphs do not match: {len(unmatched)} of {len(weighted)} quantized layers have "
            f"no FP layer with the same weights (e.g. {unmatched[:3]}); export both from the same checkpoint."
        )
    if unmatched:
        log.warning("%d quantized layers have no FP counterpart (their FP weights are not restored): %s",
                    len(unmatched), unmatched[:5])  # fmt: skip
    out_name = q_out[0]
    feeds = timestep_feeds(graph_input_shapes(qmodel, batch, qpath), timesteps, seed)
    qnodes, fnodes = list(qmodel.graph), list(fpmodel.graph)
    consts = fp_constants(layers, qmodel, fpmodel)
    with tempfile.TemporaryDirectory(prefix="pqcad-debug-") as tmpd:
        tmp = Path(tmpd)
        # 1. local errors: every layer's output (and its FP twin's) as extra graph outputs, one run of each graph
        probes = {}
        for la in layers:
            if la.fp_index is None:
                continue
            qv, fv = qnodes[la.index].outputs[0], fnodes[la.fp_index].outputs[0]
            probes[la.index] = (qv.name, fv.name)
            for g, v in ((qmodel.graph, qv), (fpmodel.graph, fv)):
                if not v.is_graph_output():
                    g.outputs.append(v)
        qres = run_feeds(_save(qmodel, tmp, "q_probe.onnx"), feeds, threads, fused=fused)
        fres = run_feeds(_save(fpmodel, tmp, "fp_probe.onnx"), feeds, threads, fused=fused)
        if qres[0][out_name].shape != fres[0][out_name].shape:
            raise DebugError(
                f"The FP and quantized graphs do not match: output {out_name} has shape "
                f"{fres[0][out_name].shape} vs {qres[0][out_name].shape}."
            )
        fp_out = [r[out_name] for r in fres]
        base = rel_l2([r[out_name] for r in qres], fp_out)
        by_t = {
            int(t): rel_l2([q[out_name]], [f[out_name]])
            for t, q, f in zip(timesteps, qres, fres, strict=True)
        }
        local: dict[int, float | None] = {}
        for idx, (qn, fn) in probes.items():
            if qres[0][qn].shape != fres[0][fn].shape:
                log.warning(
                    "layer %s: output shape differs from its FP match; no local error", qnodes[idx].name
                )
                continue
            local[idx] = rel_l2([r[qn] for r in qres], [r[fn] for r in fres])
        log.info(
            "final rel-L2 %.4g over %d feeds; %d quantized layers to sweep", base, len(feeds), len(layers)
        )

        # 2. exclude-one sweep: the quantized graph with one layer's quantization removed
        by_name = {la.name: la for la in layers}

        def evaluate(names: list[str]) -> float:
            m = remove_quantization(qpath, [by_name[n] for n in names], consts)
            res = run_feeds(_save(m, tmp, "variant.onnx"), feeds, threads, [out_name], fused)
            return rel_l2([r[out_name] for r in res], fp_out)

        rows = []
        for i, la in enumerate(layers):
            without = evaluate([la.name])
            log.debug("[%d/%d] %s: rel-L2 without it %.4g", i + 1, len(layers), la.name, without)
            rows.append(_row(la, local.get(la.index), base, without))
        rows.sort(key=lambda r: -r["error_removed"])
        for rank, r in enumerate(rows, 1):
            r["rank"] = rank
        exclude = greedy_exclude([r["name"] for r in rows], evaluate, base, max_exclude, target)
    exclude["modules"] = [by_name[n].module for n in exclude["layers"]]
    return {
        "kind": "onnx",
        "quant_onnx": str(qpath),
        "fp_onnx": str(fpath),
        "timesteps": [int(t) for t in timesteps],
        "batch_size": batch,
        "seed": seed,
        "ort_kernels": "fused" if fused else "reference",
        "final_rel_l2": base,
        "final_rel_l2_by_timestep": by_t,
        "method": "exclude-one: share of the squared final error removed when only this layer is left in float",
        "layers": rows,
        "exclude": exclude,
    }


def _row(la: Layer, local: float | None, base: float, without: float) -> dict[str, Any]:
    return {
        "name": la.name,
        "module": la.module,
        "op_type": la.op_type,
        "quantizers": la.quantizers(),
        "fp_node": la.fp_name,
        "match": la.match,
        "local_rel_l2": local,
        "final_rel_l2_without": without,
        "error_removed": error_removed(base, without),
    }


# ---------------------------------------------------------------- report
def format_table(report: dict[str, Any], top: int | None = 20) -> str:
    """The ranking as a plain-text table, then the suggested exclude list."""
    rows = report["layers"][:top] if top else report["layers"]
    src = report.get("quant_onnx") or report.get("checkpoint")
    ow = max([9] + [len(r["op_type"]) for r in rows])
    lines = [
        f"{src}: final rel-L2 {report['final_rel_l2']:.4g} vs FP at timesteps {report['timesteps']} "
        f"(batch {report['batch_size']}, seed {report['seed']}); {len(report['layers'])} quantized layers",
        f"ranked by {report['method']}",
        "",
        f"{'rank':>4}  {'removed':>8}  {'without':>9}  {'local':>9}  {'op':<{ow}} layer",
    ]
    for r in rows:
        local = f"{r['local_rel_l2']:.3g}" if r.get("local_rel_l2") is not None else "-"
        lines.append(
            f"{r['rank']:>4}  {100 * r['error_removed']:>7.1f}%  {r['final_rel_l2_without']:>9.4g}  {local:>9}  "
            f"{r['op_type']:<{ow}} {r['module']}" + (f"  [{r['name']}]" if r["name"] != r["module"] else "")
        )
    if top and len(report["layers"]) > top:
        lines.append(f"  ... {len(report['layers']) - top} more (all of them in --json)")
    ex = report["exclude"]
    lines += ["", f"suggested exclude list ({len(ex['layers'])} layers, final rel-L2 {report['final_rel_l2']:.4g} -> "
              f"{ex['rel_l2_after']:.4g}):"]  # fmt: skip
    lines += [
        f"  {m}  [{n}]" if m != n else f"  {n}" for n, m in zip(ex["layers"], ex["modules"], strict=True)
    ]
    if not ex["layers"]:
        lines.append("  (none: no single layer's exclusion cuts the error by 5 % or more)")
    return "\n".join(lines)


def save_bar_chart(report: dict[str, Any], path: str | os.PathLike, top: int = 20) -> Path:
    """Horizontal bars of each layer's share of the final error (PIL: matplotlib is not a dependency)."""
    from PIL import Image, ImageDraw, ImageFont

    rows = report["layers"][:top]
    font = ImageFont.load_default()
    labels = [f"{r['rank']}. {r['module']}" for r in rows]
    label_w = max([int(font.getlength(s)) for s in labels] + [100]) + 16
    bar_w, row_h, head = 420, 18, 44
    width, height = label_w + bar_w + 80, head + row_h * max(len(rows), 1) + 12
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), f"share of final error removed by excluding one layer (final rel-L2 "
                   f"{report['final_rel_l2']:.3g})", fill="black", font=font)  # fmt: skip
    d.text((8, 22), "red: the suggested exclude list", fill=(200, 60, 50), font=font)
    excluded = set(report["exclude"]["layers"])
    for i, (r, label) in enumerate(zip(rows, labels, strict=True)):
        y = head + i * row_h
        d.text((8, y + 3), label, fill="black", font=font)
        frac = min(max(r["error_removed"], 0.0), 1.0)
        color = (200, 60, 50) if r["name"] in excluded else (70, 110, 180)
        d.rectangle([label_w, y + 2, label_w + max(int(frac * bar_w), 1), y + row_h - 3], fill=color)
        d.text(
            (label_w + int(frac * bar_w) + 6, y + 3),
            f"{100 * r['error_removed']:.1f}%",
            fill="black",
            font=font,
        )
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
