"""Trainable float gains at the places of SASQ's activation quantizers (the adaptation control).

SASQ trains one static scale per distinct decoder-linear input (see :mod:`sasq.patch`) on
next-token loss, with every weight frozen. Part of what those scales learn can be adaptation
to the training corpus rather than a better quantization grid. The control separates the two:
weights and activations stay in float, and each of those inputs is multiplied by a trainable
gain ``g`` (1 at the start), so a linear computes ``y = W (g x)``. The gains sit at the same
places and in the same number as SASQ's scales, and they go through the same trainer and
scales files. They also share the scales' parametrization: with ``log``, ``g = exp(theta)``, so
a step of ``lr`` changes ``g`` by about ``lr`` relative. A control that lowers perplexity as much as SASQ shows that
SASQ's gain over the float model is adaptation, not quantization.

Example:
    >>> import torch
    >>> gain = ActivationGain("layers.0.qkv", num_channels=2)
    >>> gain.set_scale(torch.tensor(2.0))
    >>> gain(torch.tensor([1.0, -3.0]))
    tensor([ 2., -6.])
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn

from sasq.patch import QUANTIZER_GROUPS, decoder_layers
from sasq.qlinear import QLinear
from sasq.quantizer import MAX_SCALE, MIN_SCALE, ActivationQuantizer
from sasq.spec import Granularity

log = logging.getLogger(__name__)

PARAMETRIZATIONS = ("log", "linear")


class ActivationGain(nn.Module):
    """A trainable multiplier of a linear layer's input, shared by the linears reading that input.

    It offers the interface that :func:`sasq.train.train_scales` and :mod:`sasq.scales` use for
    static quantizers (``raw_scale``, ``scale()``, ``set_scale()``, ``project_()``,
    ``is_static``, ``initialized``, ``describe()``), so gains train and save like scales.

    Args:
        name: unique name, the key in saved scale files (e.g. ``layers.3.qkv``).
        num_channels: input features of the linears it feeds.
        granularity: ``per-tensor`` (one gain, shape ``[]``) or ``per-channel`` (shape ``[num_channels]``).
        parametrization: ``log`` (train ``log g``) or ``linear`` (train ``g``, clamped to
            ``[MIN_SCALE, MAX_SCALE]``), as for quantizer scales.
    """

    is_static = True
    folds_into_weight = False

    def __init__(self, name: str, num_channels: int, granularity: Granularity | str = Granularity.PER_TENSOR, parametrization: str = "log") -> None:
        super().__init__()
        granularity = Granularity(granularity)
        if granularity not in (Granularity.PER_TENSOR, Granularity.PER_CHANNEL):
            raise ValueError(f"gain granularity {granularity.value!r} is invalid; use per-tensor or per-channel")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization {parametrization!r} is unknown; use log or linear")
        self.name = name
        self.num_channels = num_channels
        self.granularity = granularity
        self.parametrization = parametrization
        self.enabled = True
        shape = (num_channels,) if granularity is Granularity.PER_CHANNEL else ()
        initial = 0.0 if parametrization == "log" else 1.0
        self.raw_scale = nn.Parameter(torch.full(shape, initial), requires_grad=False)

    @property
    def initialized(self) -> bool:
        """True while the gain is finite (it starts at 1, so it is always set)."""
        return bool(torch.isfinite(self.raw_scale).all())

    def describe(self) -> str:
        """Short form stored in scales files, e.g. ``float per-tensor gain``."""
        return f"float {self.granularity.value} gain"

    def scale(self) -> Tensor:
        """Return the gain ``g``: ``exp(raw_scale)`` or ``raw_scale``, clamped to ``[MIN_SCALE, MAX_SCALE]``."""
        if self.parametrization == "log":
            return torch.exp(self.raw_scale.clamp(math.log(MIN_SCALE), math.log(MAX_SCALE)))
        return self.raw_scale.clamp(MIN_SCALE, MAX_SCALE)

    @torch.no_grad()
    def set_scale(self, scale: Tensor, zero_point: Tensor | None = None) -> None:
        """Set the gain, e.g. from a scales file; a gain has no zero point, so one must be absent or zero."""
        if zero_point is not None and bool(zero_point.ne(0).any()):
            raise ValueError(f"gain {self.name} got a non-zero zero point; load a scales file written for a gain method")
        scale = scale.to(self.raw_scale).reshape(self.raw_scale.shape).clamp(MIN_SCALE, MAX_SCALE)
        self.raw_scale.copy_(scale.log() if self.parametrization == "log" else scale)

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp the trained value back into the allowed range (after an optimiser step)."""
        if self.parametrization == "log":
            self.raw_scale.clamp_(math.log(MIN_SCALE), math.log(MAX_SCALE))
        else:
            self.raw_scale.clamp_(MIN_SCALE, MAX_SCALE)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return x * self.scale().to(x.dtype)

    def extra_repr(self) -> str:
        return f"name={self.name}, {self.describe()}, channels={self.num_channels}, parametrization={self.parametrization}"


# Anything the trainer and the scales files accept as one trainable per-place scale.
TrainableScale = ActivationQuantizer | ActivationGain


class GainLinear(nn.Module):
    """A float linear layer whose input is first multiplied by a (possibly shared) :class:`ActivationGain`.

    The wrapped layer is kept as it is, weight and all, so a tied ``lm_head`` keeps sharing the
    embedding.
    """

    def __init__(self, linear: nn.Module, gain: ActivationGain) -> None:
        super().__init__()
        self.linear = linear
        self.gain = gain
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.gain(x))


def attach_gains(
    model: nn.Module,
    granularity: Granularity | str = Granularity.PER_TENSOR,
    parametrization: str = "log",
    include_lm_head: bool = False,
) -> dict[str, ActivationGain]:
    """Wrap every decoder linear (and ``lm_head`` when asked) in a :class:`GainLinear`, in place.

    One gain per distinct input, named and shared exactly as :func:`sasq.patch.patch_model`
    names and shares input quantizers (q/k/v share one, gate/up share one). Gains are float32
    on the device of the linear they feed, as quantizer scales are, whatever the model's dtype.

    Returns:
        The gains by name, in layer order.
    """
    gains: dict[str, ActivationGain] = {}
    for index, layer in enumerate(decoder_layers(model)):
        for group, (parent_name, linear_names) in QUANTIZER_GROUPS.items():
            parent = getattr(layer, parent_name)
            linears = [getattr(parent, name) for name in linear_names]
            if any(isinstance(linear, (GainLinear, QLinear)) for linear in linears):
                raise RuntimeError(f"layer {index} is already patched; load a fresh model before attaching gains")
            gain = ActivationGain(f"layers.{index}.{group}", linears[0].in_features, granularity, parametrization)
            gain.to(linears[0].weight.device)
            gains[gain.name] = gain
            for name, linear in zip(linear_names, linears, strict=True):
                setattr(parent, name, GainLinear(linear, gain))
    if include_lm_head:
        head = model.get_output_embeddings()
        gain = ActivationGain("lm_head", head.in_features, granularity, parametrization)
        gain.to(head.weight.device)
        gains[gain.name] = gain
        model.set_output_embeddings(GainLinear(head, gain))
    log.info("attached %d float %s gains", len(gains), Granularity(granularity).value)
    return gains
