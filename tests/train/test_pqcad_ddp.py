"""torchrun with 2 CPU processes (gloo): ranks stay in sync through the W8 -> W4 switch."""

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("pqcad_ddp_worker.py")


def test_ddp_gloo_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    d0, d1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert d0 == d1, "DDP ranks diverged"
    assert d0.split()[1:] == ["8", "1"]  # all steps done, in stage 2 on both ranks
    assert (tmp_path / "student.pt").exists() and not (tmp_path / "student.pt.tmp").exists()
