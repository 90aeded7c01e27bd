import pytest
import torch

from pqcad_deploy.quant import TensorQuantizer, qrange


def _calibrated(q: TensorQuantizer, amax) -> TensorQuantizer:
    q.set_amax(torch.as_tensor(amax, dtype=torch.float32))
    return q


def test_per_tensor_equals_torch_fake_quant_and_grid():
    x = torch.randn(4, 8, 5, 5) * 3
    q = _calibrated(TensorQuantizer(8), 2.5).eval()
    s = torch.tensor(2.5) / 127
    ref = torch.fake_quantize_per_tensor_affine(x, s, torch.tensor(0, dtype=torch.int32), -128, 127)
    y = q(x)
    assert torch.equal(y, ref)
    codes = torch.round(y / s)
    assert codes.min() >= -128 and codes.max() <= 127
    assert torch.allclose(codes * s, y)


def test_per_channel_equals_torch_and_rounds_half_even():
    w = torch.randn(6, 3, 3, 3)
    amax = w.abs().amax((1, 2, 3))
    q = _calibrated(TensorQuantizer(8, axis=0, channels=6, kind="weight"), amax).eval()
    ref = torch.fake_quantize_per_channel_affine(
        w, amax / 127, torch.zeros(6, dtype=torch.int32), 0, -128, 127
    )
    assert torch.equal(q(w), ref)
    # x * (1/s) = 0.5 and 1.5 exactly: half-to-even gives codes 0 and 2 (what ORT/TensorRT do)
    t = _calibrated(TensorQuantizer(8), 127.0).eval()
    assert t(torch.tensor([0.5, 1.5, -0.5])).tolist() == [0.0, 2.0, -0.0]


def test_four_bit_grid_and_block_shape():
    assert qrange(4) == (-8, 7) and qrange(8) == (-128, 127)
    w = torch.randn(4, 64)
    q = TensorQuantizer(4, axis=0, channels=4, block_size=32, block_dim=64, kind="weight")
    assert q.amax.shape == (4, 2)
    amax = w.reshape(8, 32).abs().amax(1).reshape(4, 2)
    _calibrated(q, amax).eval()
    y = q(w)
    s = (amax / 7).repeat_interleave(32, dim=1)
    codes = torch.round(y / s)
    assert codes.min() >= -8 and codes.max() <= 7
    assert len(torch.unique(codes[0, :32])) <= 16


def test_lsq_training_forward_matches_eval_and_grads_finite():
    x = (torch.randn(2, 16, 4, 4) * 2).requires_grad_()
    q = _calibrated(TensorQuantizer(8), 1.5)
    w = torch.randn(8, 16, requires_grad=True)
    wq = _calibrated(TensorQuantizer(4, axis=0, channels=8, kind="weight"), w.detach().abs().amax(1) * 0.8)
    q.train()
    wq.train()
    y, yw = q(x), wq(w)
    (y.square().sum() + yw.square().sum()).backward()
    assert q.amax.grad is not None and torch.isfinite(q.amax.grad).all() and q.amax.grad.abs().sum() > 0
    assert wq.amax.grad is not None and torch.isfinite(wq.amax.grad).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    q.eval()
    wq.eval()
    with torch.no_grad():
        assert torch.equal(q(x), y.detach())
        assert torch.equal(wq(w), yw.detach())


def test_state_fixed_shapes_and_bits_in_place():
    q = TensorQuantizer(8, axis=0, channels=5, kind="weight")
    sd = q.state_dict()
    assert set(sd) == {"amax", "num_bits", "calibrated"}
    assert sd["amax"].shape == (5,) and not bool(sd["calibrated"])
    amax_obj = q.amax
    q.set_num_bits(4)
    assert q.amax is amax_obj and int(q.num_bits) == 4 and q.bits == 4
    q2 = TensorQuantizer(8, axis=0, channels=5, kind="weight")
    q2.load_state_dict(q.state_dict())
    assert q2.bits == 4  # python-side cache follows the loaded buffer
    with pytest.raises(ValueError, match="num_bits"):
        q.set_num_bits(9)
    with pytest.raises(ValueError, match="non-finite"):
        q.set_amax(torch.full((5,), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        q.set_amax(torch.ones(3))


def test_half_input_computed_in_float32():
    q = _calibrated(TensorQuantizer(8), 1.0).eval()
    x = torch.randn(10)
    assert q(x.half()).dtype == torch.float16
    assert torch.allclose(q(x.half()).float(), q(x.half().float()).half().float())
