"""Hostile files derived from the good artefacts: each function returns a ``setup(d, art)`` that writes one into
the case folder ``d`` under the name the case's argv uses."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests._utils import write_idx

Setup = Callable[[Path, Any], None]


class Evil:
    """Unpickling this runs a shell command (creates ``PWNED`` in the working directory)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def raw(name: str, data: bytes) -> Setup:
    return lambda d, art: (d / name).write_bytes(data)


def folder(name: str) -> Setup:
    return lambda d, art: (d / name).mkdir()


def truncated(artefact: str, name: str, keep: float = 0.5, companions: bool = True) -> Setup:
    """The first ``keep`` of a good artefact (its sidecar copied intact)."""

    def setup(d, art):
        src = getattr(art, artefact)
        if companions:
            art.copy(artefact, d)
            if src.name != name:
                (d / src.name).rename(d / name)
                side = d / src.with_suffix(".json").name
                if src.suffix == ".safetensors" and side.exists():
                    side.rename((d / name).with_suffix(".json"))
        data = src.read_bytes()
        (d / name).write_bytes(data[: int(len(data) * keep)])

    return setup


def torch_obj(name: str, obj_fn: Callable[[], Any]) -> Setup:
    return lambda d, art: torch.save(obj_fn(), d / name)


# ---------------------------------------------------------------- students
def student_meta(patch: Callable[[dict], Any], name: str = "student.pt") -> Setup:
    """The good student .pt with its metadata rewritten by ``patch`` (which returns the new meta)."""

    def setup(d, art):
        ck = torch.load(art.student, weights_only=True)
        ck["meta"] = json.dumps(patch(json.loads(ck["meta"])))
        torch.save(ck, d / name)

    return setup


def student_tensors(patch: Callable[[dict], None], name: str = "student.pt") -> Setup:
    def setup(d, art):
        ck = torch.load(art.student, weights_only=True)
        patch(ck["state_dict"])
        torch.save(ck, d / name)

    return setup


def set_path(obj: dict, path: str, value: Any) -> dict:
    """``set_path(meta, "model.config.block_out_channels", [8192, 8192])``; returns ``obj``."""
    keys = path.split(".")
    cur = obj
    for k in keys[:-1]:
        cur = cur[k]
    cur[keys[-1]] = value
    return obj


def meta_set(path: str, value: Any) -> Callable[[dict], dict]:
    return lambda m: set_path(m, path, value)


# ---------------------------------------------------------------- safetensors + sidecar pairs
def sidecar(artefact: str, patch: Callable[[Any], Any] | None, raw_text: str | None = None) -> Setup:
    """A good .safetensors artefact copied into ``d`` with its JSON sidecar rewritten (or replaced by
    ``raw_text``; ``patch`` None and no text: the sidecar is deleted)."""

    def setup(d, art):
        main = art.copy(artefact, d)
        side = main.with_suffix(".json")
        if raw_text is not None:
            side.write_text(raw_text)
        elif patch is None:
            side.unlink()
        else:
            side.write_text(json.dumps(patch(json.loads(side.read_text()))))

    return setup


def torn_pair(artefact: str) -> Setup:
    """The artefact's data file from one save and its sidecar from another (a save interrupted between the two
    renames): the data is re-saved with different tensors and the old sidecar put back."""

    def setup(d, art):
        from safetensors.torch import load_file, save_file

        main = art.copy(artefact, d)
        side = main.with_suffix(".json").read_bytes()
        tensors = load_file(str(main))
        from safetensors import safe_open

        with safe_open(str(main), "pt") as f:
            meta = f.metadata() or {}
        first = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[first] = tensors[first] * 0.5
        meta = {**meta, "pair_id": "0" * 32} if "pair_id" in meta else meta
        save_file(tensors, str(main), metadata=meta)
        main.with_suffix(".json").write_bytes(side)

    return setup


def calib_tensors(patch: Callable[[dict], None], name: str = "calib.safetensors") -> Setup:
    """The good calibration set with its tensors rewritten (the sidecar rewritten to match the new data: a
    consistent pair whose content is bad)."""

    def setup(d, art):
        from pqcad_deploy.calibset import CalibSet

        cs = CalibSet.load(art.calib)
        tensors = {
            k: getattr(cs, k) for k in ("x_t", "t", "eps_fp", "x_next", "x_next2", "alpha_t", "alpha_next2")
        }
        patch(tensors)
        CalibSet(**tensors, meta=cs.meta).save(d / name)

    return setup


# ---------------------------------------------------------------- ONNX and ORT engines
def tiny_add_onnx(name: str) -> Setup:
    """A valid ONNX model that is not a UNet (one Add on an input called ``x``)."""

    def setup(d, art):
        import onnx
        from onnx import TensorProto, helper

        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / name)

    return setup


def onnx_missing_external_data(name: str) -> Setup:
    """The good ONNX re-saved with its weights in ``<name>.data``, which is then deleted."""

    def setup(d, art):
        import onnx

        m = onnx.load(art.onnx)
        onnx.save(m, d / name, save_as_external_data=True, location=f"{name}.data", size_threshold=0)
        (d / f"{name}.data").unlink()

    return setup


def engine_json(patch: Callable[[dict], Any] | None = None, raw_text: str | None = None) -> Setup:
    """The good ORT engine (JSON + optimized model) copied into ``d`` as ``e.ort.json``, its JSON rewritten."""

    def setup(d, art):
        meta = json.loads(art.engine.read_text())
        shutil.copy2(art.engine.parent / meta["model"], d / meta["model"])
        text = raw_text if raw_text is not None else json.dumps(patch(meta) if patch else meta)
        (d / "e.ort.json").write_text(text)

    return setup


def engine_garbage_model() -> Setup:
    def setup(d, art):
        meta = json.loads(art.engine.read_text())
        (d / meta["model"]).write_bytes(b"\x08\x07garbage" * 10)
        (d / "e.ort.json").write_text(json.dumps(meta))

    return setup


# ---------------------------------------------------------------- Fashion-MNIST folders
def fmnist(mutate: Callable[[Path], None]) -> Setup:
    """A good fake Fashion-MNIST folder ``d/data`` changed by ``mutate(folder)``."""

    def setup(d, art):
        shutil.copytree(art.data, d / "data")
        mutate(d / "data")

    return setup


def corrupt_gzip(folder: Path) -> None:
    p = folder / "train-images-idx3-ubyte.gz"
    data = bytearray(p.read_bytes())
    data[20:60] = b"\xff" * 40  # header intact, deflate stream broken
    p.write_bytes(bytes(data))


def truncated_gzip(folder: Path) -> None:
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])


def labels_out_of_range(folder: Path) -> None:
    n = len(gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())) - 8
    write_idx(folder / "train-labels-idx1-ubyte", np.full(n, 200), 2049)


def wrong_magic(folder: Path) -> None:
    n = len(gzip.decompress((folder / "train-labels-idx1-ubyte.gz").read_bytes())) - 8
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(n), 2051)
