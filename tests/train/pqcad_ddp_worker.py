"""Run by torchrun from test_pqcad_ddp.py: a few PQCAD steps on tiny-unet, each rank writes a weight digest."""

import hashlib
import os
import sys
from pathlib import Path

import torch


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    from pqcad_deploy.calibset import collect_calibset
    from pqcad_deploy.denoiser import TorchDenoiser
    from pqcad_deploy.loading import open_model
    from pqcad_deploy.train.pqcad import train_pqcad
    from pqcad_deploy.train.pqcad_config import PQCADConfig

    bundle = open_model("tiny-unet")
    teacher, spec = bundle.model, bundle.spec
    cs = collect_calibset(
        TorchDenoiser(teacher),
        spec,
        n_trajectories=4,
        steps=10,
        n_points=5,
        seed=0,
        device="cpu",
        batch_size=4,
    )
    cfg = PQCADConfig(
        steps=8, stage1_cap=4, batch_size=4, check_every=2, save_every=4, patience=100, ptq_method="maxabs"
    )
    rank = os.environ["RANK"]

    def digest(trainer) -> None:
        h = hashlib.sha256()
        for k, v in sorted(trainer.student.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().contiguous().numpy().tobytes())
        Path(out_dir, f"rank{rank}.txt").write_text(f"{h.hexdigest()} {trainer.step} {trainer.stage}\n")

    train_pqcad(
        cfg, teacher, spec, cs, Path(out_dir) / "student.pt", device="cpu", progress=False, on_done=digest
    )


if __name__ == "__main__":
    main(sys.argv[1])
