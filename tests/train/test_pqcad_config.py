"""PQCADConfig: validation with clear errors and a JSON round trip (it is stored in checkpoints)."""

import json

import pytest

from pqcad_deploy.quant import parse_bits
from pqcad_deploy.train.pqcad_config import PQCADConfig


def test_round_trip_and_stage_bits():
    c = PQCADConfig(bits=("w8a8", "w4a8"), lambda_c=0.5, halve_steps=True)
    again = PQCADConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.stage_bits == [(8, 8), (4, 8)]
    assert PQCADConfig(bits=("w8a8", "w4a8"), schedule="fixed").stage_bits == [(4, 8)]
    assert parse_bits("W4A8") == (4, 8)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"bits": ("w8a8", "w5a8")}, "weights must be one of"),
        ({"bits": ("8/8",)}, "wXaY"),
        ({"lambda_d": 0.0, "lambda_c": 0.0}, "not both 0"),
        ({"teacher_kind": "ema"}, "teacher_kind"),
        ({"schedule": "cosine"}, "schedule"),
        ({"switch_signal": "val"}, "switch_signal"),
        ({"switch_probe": 0}, "switch_probe"),
    ],
)
def test_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        PQCADConfig(**kw)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="Unknown PQCAD config keys"):
        PQCADConfig.from_dict({**PQCADConfig().to_dict(), "lambda_x": 1})
