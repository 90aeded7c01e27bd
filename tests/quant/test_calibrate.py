import pytest
import torch

from pqcad_deploy.quant import QuantConfig, TensorQuantizer, calibrate, calibrate_weight, iter_quantizers
from pqcad_deploy.quant.calibrate import _act_amax, _Collector


def _collect(x: torch.Tensor, keep: bool = True) -> _Collector:
    c = _Collector(keep_samples=keep, seed=0)
    c.observe(x)
    return c


def test_estimators_on_heavy_tailed_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g)
    x[:10] = 40.0  # a few outliers
    maxabs = _act_amax(_collect(x, keep=False), "maxabs", 8, 99.99)
    pct = _act_amax(_collect(x), "percentile", 8, 99.9)
    mse = _act_amax(_collect(x), "mse", 8, 99.99)
    assert maxabs == 40.0
    assert 2.5 < pct < 4.5  # ~3.29 for N(0,1) at 99.9 % of |x|
    assert mse < maxabs  # clipping outliers lowers the MSE on Gaussian data
    q = TensorQuantizer(8)

    def err(amax):
        q.set_amax(torch.tensor(float(amax)))
        return (q.eval()(x) - x).square().mean()

    assert err(mse) < err(maxabs)


def test_weight_calibration_per_channel_and_mse():
    w = torch.randn(4, 3, 3, 3)
    q = TensorQuantizer(8, axis=0, channels=4, kind="weight")
    calibrate_weight(q, w, "maxabs")
    assert torch.allclose(q.amax, w.abs().amax((1, 2, 3)))
    assert q.is_calibrated
    q4 = TensorQuantizer(4, axis=0, channels=4, kind="weight")
    calibrate_weight(q4, w, "mse")
    assert (q4.amax <= w.abs().amax((1, 2, 3)) + 1e-6).all()
    err_mse = (q4.eval()(w) - w).square().sum()
    calibrate_weight(q4, w, "maxabs")
    assert err_mse <= (q4(w) - w).square().sum()


@pytest.mark.parametrize("method", ["maxabs", "percentile", "mse"])
def test_calibrate_model_all_methods(quantized, method):
    model, _, inputs = quantized("tiny-unet", QuantConfig(), method=method, batches=1)
    qs = list(iter_quantizers(model))
    assert all(q.is_calibrated for _, q in qs)
    assert all(torch.isfinite(q.amax).all() and (q.amax > 0).all() for _, q in qs)
    assert all(q._collector is None for _, q in qs)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()


def test_calibrate_errors(quantized):
    model, _, _ = quantized("tiny-unet", QuantConfig(), method=None)
    with pytest.raises(ValueError, match="calibration method"):
        calibrate(model, lambda m: None, "kl")
    with pytest.raises(ValueError, match="saw no data"):
        calibrate(model, lambda m: None, "maxabs")
    with pytest.raises(ValueError, match="uncalibrated"):
        calibrate(model, None)
    with pytest.raises(ValueError, match="quantize_model"):
        calibrate(torch.nn.Linear(2, 2), lambda m: None)
