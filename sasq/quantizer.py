"""Fake quantization with straight-through gradients, and the activation quantizer module.

Fake quantization maps ``x`` to ``x_hat = s * (clamp(round(x / s) + z, qmin, qmax) - z)`` and
keeps it in float. Gradients follow the straight-through estimator (STE):

* ``d round(v) / dv = 1``;
* ``d clamp(v) / dv = 1`` inside ``[qmin, qmax]`` and ``0`` outside;

so autograd gives ``d x_hat / dx = 1`` inside the range and ``0`` where clipped, and
``d x_hat / ds = round(x / s) - x / s`` inside the range and ``qmin - z`` or ``qmax - z`` where
clipped: the LSQ rule (Esser et al., "Learned Step Size Quantization", ICLR 2020).

Example:
    >>> import torch
    >>> x = torch.tensor([0.26, -3.0])
    >>> fake_quantize(x, torch.tensor(0.1), torch.tensor(0.0), -8, 7)
    tensor([ 0.3000, -0.8000])
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from sasq.spec import Granularity, QuantSpec

log = logging.getLogger(__name__)

MIN_SCALE = 1e-8
MAX_SCALE = 1e8


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest (ties to even), with gradient 1 (straight-through)."""
    return x + (torch.round(x) - x).detach()


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """Return ``x`` unchanged in the forward pass, with its gradient multiplied by ``factor``."""
    return (x - x * factor).detach() + x * factor


def quantize_to_grid(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int) -> Tensor:
    """Integer grid values ``clamp(round(x / s) + z, qmin, qmax)`` as float, with STE gradients."""
    return torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | float, qmin: int, qmax: int) -> Tensor:
    """Quantize then de-quantize ``x``; ``scale`` and ``zero_point`` broadcast against ``x``."""
    return (quantize_to_grid(x, scale, zero_point, qmin, qmax) - zero_point) * scale


def qparams_from_range(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale and zero point covering ``[lo, hi]`` on the spec's grid.

    Symmetric: ``scale = max(|lo|, |hi|) / qmax`` and zero point 0. Asymmetric: the range is
    widened to include 0, ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = round(qmin - lo / scale)``.
    Scales are clamped to at least ``MIN_SCALE`` so an all-zero input cannot give a zero scale.
    """
    if spec.symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / spec.qmax).clamp(MIN_SCALE, MAX_SCALE)
        return scale, torch.zeros_like(scale)
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    scale = ((hi - lo) / (spec.qmax - spec.qmin)).clamp(MIN_SCALE, MAX_SCALE)
    zero_point = torch.round(spec.qmin - lo / scale).clamp(spec.qmin, spec.qmax)
    return scale, zero_point


def weight_qparams(weight: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Round-to-nearest (RTN) abs-max qparams of a ``[out, in]`` weight.

    Shapes: per-tensor ``[]``; per-channel ``[out, 1]``; per-group ``[out, in // group_size, 1]``
    (the weight is then viewed as ``[out, in // group_size, group_size]``).
    """
    if spec.granularity is Granularity.PER_TENSOR:
        lo, hi = weight.min(), weight.max()
    elif spec.granularity is Granularity.PER_CHANNEL:
        lo, hi = weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    elif spec.granularity is Granularity.PER_GROUP:
        grouped = group_view(weight, spec)
        lo, hi = grouped.amin(dim=-1, keepdim=True), grouped.amax(dim=-1, keepdim=True)
    else:
        raise ValueError(f"weight granularity {spec.granularity.value} is not supported; use per-channel")
    return qparams_from_range(lo, hi, spec)


def group_view(weight: Tensor, spec: QuantSpec) -> Tensor:
    """View a ``[out, in]`` weight as ``[out, in // group_size, group_size]``."""
    out_features, in_features = weight.shape
    size = spec.group_size or in_features
    if in_features % size:
        raise ValueError(f"in_features={in_features} is not divisible by group_size={size}; pick a divisor")
    return weight.reshape(out_features, in_features // size, size)


def fake_quantize_weight(weight: Tensor, spec: QuantSpec) -> Tensor:
    """RTN fake quantization of a ``[out, in]`` weight; differentiable by STE (used when folded)."""
    scale, zero_point = weight_qparams(weight, spec)
    if spec.granularity is Granularity.PER_GROUP:
        grouped = fake_quantize(group_view(weight, spec), scale, zero_point, spec.qmin, spec.qmax)
        return grouped.reshape(weight.shape)
    return fake_quantize(weight, scale, zero_point, spec.qmin, spec.qmax)


def dynamic_qparams(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Per-token (last dimension reduced) or per-tensor qparams computed from ``x`` itself, no gradient."""
    with torch.no_grad():
        if spec.granularity is Granularity.PER_TOKEN:
            lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        else:
            lo, hi = x.min(), x.max()
        return qparams_from_range(lo.float(), hi.float(), spec)


class ActivationQuantizer(nn.Module):
    """Quantizes a linear layer's input, statically (held scale) or dynamically (per call).

    Static scales are trainable. Their shape is ``[]`` for per-tensor and ``[num_channels]`` for
    per-channel. A per-channel static scale ``s`` is only deployable on an integer GEMM when it is
    folded into the weight's input columns before the weight is quantized:
    ``y = Q_w(W diag(s)) . clamp(round(x / s))``. :class:`sasq.qlinear.QLinear` computes exactly
    that, so the quantized weight depends on ``s`` and gradients reach ``s`` through both factors.

    Args:
        spec: the activation :class:`QuantSpec`.
        name: unique name, the key in saved scale files (e.g. ``layers.3.attn_in``).
        num_channels: input features, needed for per-channel scales.
        parametrization: ``log`` (train ``log s``) or ``linear`` (train ``s``, clamped).
        lsq_grad_scale: scale the gradient by ``1 / sqrt(N * qmax)``, N the elements one scale
            covers per token (``num_channels`` for per-tensor, 1 for per-channel).

    While ``observer`` is set, ``forward`` feeds its input to the observer and returns it
    unchanged; while ``enabled`` is False it returns its input unchanged.
    """

    def __init__(
        self,
        spec: QuantSpec,
        name: str,
        num_channels: int,
        parametrization: str = "log",
        lsq_grad_scale: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.name = name
        self.num_channels = num_channels
        self.parametrization = parametrization
        self.enabled = True
        self.observer = None
        per_token_elements = 1 if spec.granularity is Granularity.PER_CHANNEL else num_channels
        self.grad_factor = 1.0 / math.sqrt(per_token_elements * spec.qmax) if lsq_grad_scale else 1.0
        shape = (num_channels,) if spec.granularity is Granularity.PER_CHANNEL else ()
        if spec.dynamic:
            self.raw_scale = None
        else:
            self.raw_scale = nn.Parameter(torch.full(shape, float("nan")))
            self.register_buffer("zero_point", torch.zeros(shape))

    @property
    def is_static(self) -> bool:
        """True when the scale is held (and trainable) rather than computed per call."""
        return not self.spec.dynamic

    def describe(self) -> str:
        """Short form of the activation spec, stored in scales files (e.g. ``int8 sym per-tensor static``)."""
        return self.spec.describe()

    @property
    def folds_into_weight(self) -> bool:
        """True for static per-channel scales, which the linear folds into its weight columns."""
        return self.is_static and self.spec.granularity is Granularity.PER_CHANNEL

    @property
    def initialized(self) -> bool:
        """True once a static scale was set (dynamic quantizers are always ready)."""
        return self.raw_scale is None or bool(torch.isfinite(self.raw_scale).all())

    def scale(self) -> Tensor:
        """Return the positive, finite static scale, with the LSQ gradient factor applied."""
        if self.raw_scale is None:
            raise RuntimeError(f"quantizer {self.name} is dynamic and holds no scale")
        if self.parametrization == "log":
            value = torch.exp(self.raw_scale.clamp(math.log(MIN_SCALE), math.log(MAX_SCALE)))
        else:
            value = self.raw_scale.clamp(MIN_SCALE, MAX_SCALE)
        return scale_grad(value, self.grad_factor) if self.grad_factor != 1.0 else value

    @torch.no_grad()
    def set_scale(self, scale: Tensor, zero_point: Tensor | None = None) -> None:
        """Set the static scale (and zero point), e.g. from an observer or a saved file."""
        if self.raw_scale is None:
            raise RuntimeError(f"quantizer {self.name} is dynamic; it takes no scale")
        scale = scale.to(self.raw_scale).reshape(self.raw_scale.shape).clamp(MIN_SCALE, MAX_SCALE)
        self.raw_scale.copy_(scale.log() if self.parametrization == "log" else scale)
        if zero_point is not None:
            self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the trained value back into the allowed range (after an optimiser step)."""
        if self.raw_scale is None:
            return
        if self.parametrization == "log":
            self.raw_scale.clamp_(math.log(MIN_SCALE), math.log(MAX_SCALE))
        else:
            self.raw_scale.clamp_(MIN_SCALE, MAX_SCALE)

    def qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and zero point to use for input ``x``."""
        if self.raw_scale is None:
            return dynamic_qparams(x, self.spec)
        if not self.initialized:
            raise RuntimeError(f"quantizer {self.name} has no scale yet; calibrate or load scales first")
        return self.scale(), self.zero_point

    def to_grid(self, x: Tensor) -> Tensor:
        """Integer grid values minus the zero point, as float (the folded per-channel path)."""
        scale, zero_point = self.qparams(x)
        return quantize_to_grid(x, scale, zero_point, self.spec.qmin, self.spec.qmax) - zero_point

    def forward(self, x: Tensor) -> Tensor:
        if self.observer is not None:
            self.observer.update(x.detach())
            return x
        if not self.enabled:
            return x
        scale, zero_point = self.qparams(x)
        return fake_quantize(x, scale.to(x.dtype), zero_point.to(x.dtype), self.spec.qmin, self.spec.qmax)

    def extra_repr(self) -> str:
        return f"name={self.name}, {self.spec.describe()}, channels={self.num_channels}"
