"""Target-aware fake quantization: what is calibrated and trained is what TensorRT / ONNX Runtime execute.

Flow: ``quantize_model(model, QuantConfig(...))`` -> ``calibrate(model, forward_loop)`` -> (train) ->
``with export_mode(model): torch.onnx.export(...)``; ``set_weight_bits`` switches W8 -> W4 in place.
"""

from .calibrate import calibrate, calibrate_weight
from .config import QUANT_CONFIG_VERSION, QuantConfig, QuantConfigError, parse_bits
from .control import UncalibratedError, check_calibrated, export_mode, set_weight_bits
from .modules import QUANT_MODULES, QuantConv2d, QuantLinear
from .placement import (
    QuantAttnProcessor,
    QuantPlacementError,
    get_quant_config,
    iter_quantizers,
    quantize_model,
)
from .quantizer import QuantizerStateError, TensorQuantizer, qrange

__all__ = [
    "QUANT_CONFIG_VERSION",
    "QUANT_MODULES",
    "QuantAttnProcessor",
    "QuantConfig",
    "QuantConfigError",
    "QuantConv2d",
    "QuantLinear",
    "QuantPlacementError",
    "QuantizerStateError",
    "TensorQuantizer",
    "UncalibratedError",
    "calibrate",
    "calibrate_weight",
    "check_calibrated",
    "export_mode",
    "get_quant_config",
    "iter_quantizers",
    "parse_bits",
    "qrange",
    "quantize_model",
    "set_weight_bits",
]
