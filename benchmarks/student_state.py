"""Carry a PTQ student to the GPU as its quantizer state only (the device takes 64 MiB in all).

A PTQ student holds its teacher's float weights unchanged plus its quantizers' state; ``pack`` checks that, and
writes only the tensors the teacher lacks, with the student's metadata and a digest of every tensor; ``unpack``
puts teacher and state together again and refuses the result unless it has the packed student's digest.

    python benchmarks/student_state.py pack runs/pers/gpu_w8a8.safetensors fmnist-t2i .devdata/w8.state.safetensors
    python benchmarks/student_state.py unpack .devdata/w8.state.safetensors fmnist-t2i runs/pers/gpu_w8a8.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

from pqcad_deploy.io import PAIR_KEY, check_pair, load_safetensors, read_json_sidecar, save_safetensors_pair
from pqcad_deploy.loading import open_model
from pqcad_deploy.student import load_student

STATE_FORMAT = "pqcad-student-state"


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].contiguous().reshape(-1)
        h.update(f"{k}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def teacher_tensors(teacher: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in open_model(teacher).model.state_dict().items()}


def pack(student: Path, teacher: str, out: Path) -> None:
    tensors, _ = load_safetensors(student, "student")
    meta = read_json_sidecar(student.with_suffix(".json"), str(student), "the model and quant config")
    meta.pop(PAIR_KEY, None)
    base = teacher_tensors(teacher)
    differ = [k for k, v in base.items() if k not in tensors or not torch.equal(tensors[k], v)]
    if differ:
        raise SystemExit(
            f"{student} is not {teacher}'s weights plus quantizers ({differ[:3]} differ): carry it whole."
        )
    state = {k: v for k, v in tensors.items() if k not in base}
    side = {
        "format": STATE_FORMAT,
        "teacher": teacher,
        "student_sha256": digest(tensors),
        "student_meta": meta,
    }
    save_safetensors_pair(out, state, side, {"format": STATE_FORMAT})
    print(f"wrote {out}: {len(state)} quantizer tensors ({out.stat().st_size / 1e6:.2f} MB)")


def unpack(state_path: Path, teacher: str, out: Path) -> None:
    state, header = load_safetensors(state_path, "student state")
    side_path = state_path.with_suffix(".json")
    side = read_json_sidecar(side_path, str(state_path), "the packed student's metadata")
    check_pair(state_path, header, side_path, side)
    if side.get("format") != STATE_FORMAT:
        raise SystemExit(f"{state_path} is not a {STATE_FORMAT} file.")
    tensors = {**teacher_tensors(teacher), **state}
    if digest(tensors) != side["student_sha256"]:
        raise SystemExit(f"{state_path} + {teacher} do not give the packed student (another teacher?).")
    save_safetensors_pair(out, tensors, side["student_meta"], {"format": side["student_meta"]["format"]})
    load_student(out)  # the student's own checks
    print(f"wrote {out} (digest verified)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("src", type=Path, help="pack: the student; unpack: the state file")
    p.add_argument("teacher", help="the teacher (file or zoo name)")
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    (pack if a.action == "pack" else unpack)(a.src, a.teacher, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
