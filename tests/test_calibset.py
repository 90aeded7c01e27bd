import pytest
import torch

from pqcad_deploy.calibset import CalibSet, calib_batches, collect_calibset, eps_mse, forward_loop_from
from pqcad_deploy.denoiser import TorchDenoiser
from pqcad_deploy.io import CheckpointError
from pqcad_deploy.sampling import make_scheduler
from pqcad_deploy.zoo import build_model, get_spec


@pytest.fixture(scope="module")
def tiny_set():
    spec = get_spec("tiny-unet")
    model = build_model(spec).eval()
    cs = collect_calibset(
        TorchDenoiser(model), spec, n_trajectories=3, steps=8, n_points=3, batch_size=2, progress=False
    )
    return model, spec, cs


def test_points_are_even_steps_across_the_trajectory(tiny_set):
    _, _, cs = tiny_set
    assert len(cs) == 9
    # even step indices of the 8-step schedule are [0, 2, 4, 6]; 3 evenly spaced picks are its 1st, 3rd, 4th
    assert cs.meta["step_indices"] == [0, 4, 6]
    assert int(cs.t.max()) == 999


def test_two_step_target_is_two_ddim_steps(tiny_set):
    """x_next2 must equal two scheduler steps with the FP model from x_t."""
    model, spec, cs = tiny_set
    den = TorchDenoiser(model)
    sched = make_scheduler("ddim", **spec.scheduler)
    sched.set_timesteps(8)
    ts = list(sched.timesteps)
    i = 3  # a point from the middle
    t = int(cs.t[i])
    k = [int(x) for x in ts].index(t)
    x = cs.x_t[i : i + 1]
    eps = den(x, cs.t[i : i + 1])
    assert torch.allclose(eps, cs.eps_fp[i : i + 1], atol=1e-5)
    x1 = sched.step(eps, ts[k], x).prev_sample
    assert torch.allclose(x1, cs.x_next[i : i + 1], atol=1e-5)
    x2 = sched.step(den(x1, ts[k + 1].reshape(1)), ts[k + 1], x1).prev_sample
    assert torch.allclose(x2, cs.x_next2[i : i + 1], atol=1e-5)
    dest = int(ts[k + 2]) if k + 2 < len(ts) else None
    want = sched.alphas_cumprod[dest] if dest is not None else sched.final_alpha_cumprod
    assert float(cs.alpha_next2[i]) == pytest.approx(float(want))


def test_save_load_round_trip(tiny_set, tmp_path):
    _, _, cs = tiny_set
    cs.save(tmp_path / "c.safetensors")
    back = CalibSet.load(tmp_path / "c.safetensors")
    assert torch.equal(back.x_next2, cs.x_next2) and back.meta["steps"] == 8
    batches = list(calib_batches(back, 4))
    assert sum(len(b["t"]) for b in batches) == len(cs)


def test_forward_loop_runs_model(tiny_set):
    model, _, cs = tiny_set
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    forward_loop_from(cs, batch_size=4, max_batches=2)(model)
    h.remove()
    assert len(calls) == 2


def test_missing_or_foreign_file_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        CalibSet.load(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensors"):
        CalibSet.load(tmp_path / "x.safetensors")


def test_eps_mse_is_zero_for_the_fp_model_and_grows_with_a_perturbation(tiny_set):
    model, _, cs = tiny_set
    idx = torch.arange(len(cs))
    model.train()
    assert eps_mse(model, cs, idx, "cpu", chunk=4) < 1e-10  # the set's targets are this model's predictions
    assert model.training  # mode restored
    model.eval()
    other = build_model(get_spec("tiny-unet"), seed=1).eval()
    assert eps_mse(other, cs, idx, "cpu") > 1e-4
