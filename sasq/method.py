"""Methods: named recipes that turn a float model into a quantized one.

A :class:`Method` says how activations are quantized (not at all, dynamically per token, or
with static scales from an observer), whether its static scales are then trained, and which
float-model transform (smoothing, rotation) runs first. The CLI and the workflow call methods
by name through :func:`get_method`; the baselines register themselves from ``baselines/``.

Example:
    >>> {"fp", "dynamic", "sasq"} <= set(available_methods())
    True
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import Tensor, nn

from sasq.calibrate import calibrate
from sasq.gain import TrainableScale, attach_gains
from sasq.patch import patch_model
from sasq.spec import OBSERVER_NAMES, Granularity, QuantConfig, QuantSpec

log = logging.getLogger(__name__)

ACTIVATION_MODES = ("none", "dynamic", "static")
WEIGHT_QUANTIZERS = ("rtn", "gptq")

Transform = Callable[[nn.Module, Tensor], None]


@dataclass(frozen=True)
class Method:
    """A named quantization recipe.

    Args:
        name: registry key, used on the command line and in result rows.
        summary: one line for ``--help`` and reports.
        activation: ``none`` (float activations and weights), ``dynamic`` (per-token scales at
            run time) or ``static`` (scales from calibration).
        observer: calibration statistic for static scales.
        trains: the static scales are trained after calibration (SASQ).
        transform: function ``(model, calibration_windows)`` changing the float model in place
            before quantization, or ``None``.
        gains: keep weights and activations in float and put one trainable gain (1 at the
            start) at each place where SASQ has an input quantizer (:mod:`sasq.gain`); needs
            ``activation="none"``.
    """

    name: str
    summary: str
    activation: str
    observer: str | None = None
    trains: bool = False
    transform: Transform | None = None
    gains: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATION_MODES:
            raise ValueError(f"activation {self.activation!r} is unknown; use one of {', '.join(ACTIVATION_MODES)}")
        if self.activation == "static" and self.observer is None:
            raise ValueError(f"static method {self.name} needs an observer")
        if self.gains and self.activation != "none":
            raise ValueError(f"method {self.name} has gains and activation {self.activation!r}; gains apply to float models, use activation='none'")
        if self.observer is not None and self.activation != "static":
            raise ValueError(f"method {self.name} has observer {self.observer!r} but activation {self.activation!r}; only static methods use an observer")

    @property
    def needs_calibration(self) -> bool:
        return self.activation == "static" or self.transform is not None

    @property
    def has_scales(self) -> bool:
        """True when the method has per-place values (static scales or gains) that scales files store."""
        return self.activation == "static" or self.gains


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry; a second method with the same name is an error."""
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is registered twice; pick another name")
    METHODS[method.name] = method
    return method


def _load_plugins() -> None:
    importlib.import_module("baselines")


def available_methods() -> dict[str, Method]:
    """Every registered method by name (the SASQ methods and the baselines)."""
    _load_plugins()
    return dict(METHODS)


def get_method(name: str) -> Method:
    """A registered method by name, with an error listing the known names."""
    methods = available_methods()
    if name not in methods:
        raise ValueError(f"method {name!r} is unknown; use one of {', '.join(sorted(methods))}")
    return methods[name]


@dataclass(frozen=True)
class Scheme:
    """Bit-widths and options shared by every method in one comparison.

    Args:
        wbits: weight bits (RTN per output channel, or per group with ``weight_group_size``).
        abits: activation bits.
        granularity: static activation scale granularity: ``per-tensor`` or ``per-channel``.
        symmetric: symmetric activation grid (weights are always symmetric).
        weight_group_size: columns per weight group, or ``None`` for per-channel weights.
        percentile: the ``percentile`` observer's percentile.
        lsq_grad_scale, scale_parametrization, quantize_lm_head: see :class:`QuantConfig`.
        weight_quantizer: ``rtn`` (round to nearest) or ``gptq`` (:mod:`sasq.gptq`, run on the
            calibration windows after the method's transform); applies to every method.
    """

    wbits: int = 8
    abits: int = 8
    granularity: str = "per-tensor"
    symmetric: bool = True
    weight_group_size: int | None = None
    percentile: float = 99.99
    lsq_grad_scale: bool = False
    scale_parametrization: str = "log"
    quantize_lm_head: bool = False
    weight_quantizer: str = "rtn"

    def __post_init__(self) -> None:
        for name in ("wbits", "abits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 8:
                raise ValueError(f"{name}={value} is out of range; use an integer from 2 to 8")
        if self.weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ValueError(f"weight_quantizer {self.weight_quantizer!r} is unknown; use one of {', '.join(WEIGHT_QUANTIZERS)}")
        if self.granularity not in (Granularity.PER_TENSOR.value, Granularity.PER_CHANNEL.value):
            raise ValueError(f"granularity {self.granularity!r} is invalid for static scales; use per-tensor or per-channel")


def with_observer(method: Method, observer: str) -> Method:
    """Return ``method`` with another calibration observer for its static scales (the init ablation)."""
    if method.activation != "static":
        raise ValueError(f"method {method.name} has no static scales, so an observer does not apply; drop --observer or use a static method")
    if observer not in OBSERVER_NAMES:
        raise ValueError(f"observer {observer!r} is unknown; use one of {', '.join(OBSERVER_NAMES)}")
    return replace(method, observer=observer)


def quant_config(method: Method, scheme: Scheme) -> QuantConfig | None:
    """The :class:`QuantConfig` a method uses under a scheme, or ``None`` for float methods."""
    if method.activation == "none":
        return None
    if scheme.weight_group_size:
        weight = QuantSpec(bits=scheme.wbits, granularity=Granularity.PER_GROUP, group_size=scheme.weight_group_size)
    else:
        weight = QuantSpec(bits=scheme.wbits, granularity=Granularity.PER_CHANNEL)
    if method.activation == "dynamic":
        activation = QuantSpec(bits=scheme.abits, symmetric=scheme.symmetric, granularity=Granularity.PER_TOKEN, dynamic=True)
    else:
        activation = QuantSpec(bits=scheme.abits, symmetric=scheme.symmetric, granularity=Granularity(scheme.granularity))
    return QuantConfig(
        weight=weight,
        activation=activation,
        observer=method.observer or "mean-max",
        percentile=scheme.percentile,
        lsq_grad_scale=scheme.lsq_grad_scale,
        scale_parametrization=scheme.scale_parametrization,
        quantize_lm_head=scheme.quantize_lm_head,
    )


def build_quantized_model(
    model: nn.Module,
    method: Method,
    scheme: Scheme,
    calib_windows: Tensor | None,
    calibrate_scales: bool = True,
    batch_size: int = 1,
) -> dict[str, TrainableScale]:
    """Apply ``method`` to ``model`` in place: transform, then patch and calibrate, or attach gains.

    Args:
        model: a float LLaMA-family causal LM.
        method: the recipe.
        scheme: bit-widths and options.
        calib_windows: calibration token ids ``[n, seqlen]``; required when the method
            transforms the model, calibrates static scales or quantizes weights by GPTQ.
        calibrate_scales: set False when the scales come from a file instead.
        batch_size: windows per calibration forward pass.

    Returns:
        The input quantizers by name, the gains of a gain method, or an empty dict for float methods.
    """
    gptq = method.activation != "none" and scheme.weight_quantizer == "gptq"
    needs = method.transform is not None or (method.activation == "static" and calibrate_scales) or gptq
    if needs and calib_windows is None:
        raise ValueError(f"method {method.name} needs calibration windows; pass --calib-windows above 0")
    if method.transform is not None:
        method.transform(model, calib_windows)
    if method.gains:
        if scheme.lsq_grad_scale:
            raise ValueError(f"method {method.name} has float gains and no integer grid, so the LSQ gradient scale does not apply; drop --lsq-grad-scale")
        return attach_gains(model, scheme.granularity, scheme.scale_parametrization, scheme.quantize_lm_head)
    config = quant_config(method, scheme)
    if config is None:
        return {}
    if gptq:
        from sasq.gptq import gptq_quantize_model

        gptq_quantize_model(model, calib_windows, config.weight)
    quantizers = patch_model(model, config)
    if method.activation == "static" and calibrate_scales:
        calibrate(model, quantizers, calib_windows, config.observer, config.percentile, batch_size)
    return quantizers


register_method(Method("sasq-init", "SASQ stage 1: static scales from the mean of per-sample abs-max, untrained", "static", observer="mean-max"))
register_method(Method("sasq", "SASQ: mean-of-max initial static scales, then trained on next-token loss", "static", observer="mean-max", trains=True))
