"""Good artefacts of every kind the commands read (built once, in seconds, on tiny-unet) and the hostile variants
the cases derive from them."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests._utils import write_idx


@dataclass
class Artefacts:
    root: Path
    teacher: Path  # FP tiny-unet .safetensors + .json
    student: Path  # W8A8 student .pt (onnxruntime target)
    student_st: Path  # the same student as .safetensors + .json
    calib: Path  # calibration set .safetensors + .json (10 DDIM steps, 20 points)
    onnx: Path  # FP32 export of the teacher
    engine: Path  # ORT engine JSON (+ its .opt.onnx)
    data: Path  # fake Fashion-MNIST folder (gzip IDX)

    def paths(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items() if k != "root"}

    def copy(self, name: str, dest: Path) -> Path:
        """Copy artefact ``name`` with its companion files into ``dest``; returns the main file's new path."""
        src: Path = getattr(self, name)
        for comp in companions(src):
            if comp.exists():
                shutil.copy2(comp, dest / comp.name)
        return dest / src.name


def companions(path: Path) -> list[Path]:
    """A file and the files that belong to it (sidecar, optimized model)."""
    out = [path]
    if path.suffix == ".safetensors":
        out.append(path.with_suffix(".json"))
    if path.name.endswith(".ort.json") and path.exists():
        out.append(path.parent / json.loads(path.read_text())["model"])
    return out


def write_fake_fmnist(folder: Path, n: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, k in (("train", n), ("t10k", n // 2)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (k, 28, 28)), 2051)
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (k,)), 2049)
    return folder


def build(root: Path) -> Artefacts:
    from pqcad_deploy.calibset import collect_calibset
    from pqcad_deploy.denoiser import TorchDenoiser
    from pqcad_deploy.export.pipeline import ExportOptions, export
    from pqcad_deploy.loading import open_model
    from pqcad_deploy.quant import QuantConfig
    from pqcad_deploy.runtime.build_config import BuildPlan
    from pqcad_deploy.runtime.ort_builder import build_ort_engine
    from pqcad_deploy.student import save_student
    from pqcad_deploy.train.ptq import ptq_student
    from pqcad_deploy.zoo import build_model, get_spec, save_weights

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    spec = get_spec("tiny-unet")
    model = build_model(spec, seed=0).eval()
    teacher = save_weights(model, spec, root / "teacher.safetensors")
    calib = collect_calibset(
        TorchDenoiser(model),
        spec,
        n_trajectories=4,
        steps=10,
        n_points=5,
        seed=0,
        batch_size=4,
        progress=False,
    )
    calib.save(root / "calib.safetensors")
    qcfg = QuantConfig(target="onnxruntime", calib_method="maxabs")
    student_model, entry = ptq_student(model, qcfg, calib)
    meta = {"history": [entry]}
    student = save_student(root / "student.pt", student_model, spec, meta=meta)
    student_st = save_student(root / "student_st.safetensors", student_model, spec, meta=meta)
    onnx = root / "teacher.onnx"
    export(open_model(teacher), onnx, ExportOptions(check=False))
    engine = root / "teacher.ort.json"
    build_ort_engine(BuildPlan(onnx=onnx, save_engine=engine, backend="onnxruntime", ort_threads=1))
    data = write_fake_fmnist(root / "fmnist")
    return Artefacts(root, teacher, student, student_st, root / "calib.safetensors", onnx, engine, data)
