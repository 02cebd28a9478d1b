"""Quantization specifications: frozen dataclasses validated on construction.

One :class:`QuantSpec` describes how one tensor is quantized (bits, symmetry, granularity,
static or dynamic). A :class:`QuantConfig` bundles the weight spec and the activation spec of a
whole model, plus the options of the activation scales' training.

Integer grid (``b`` bits):

* symmetric: ``q in [-2**(b-1), 2**(b-1) - 1]``, zero point 0, ``scale = absmax / (2**(b-1) - 1)``;
* asymmetric: ``q in [0, 2**b - 1]``, ``scale = (max - min) / (2**b - 1)``,
  ``zero_point = round(-min / scale)``.

Example:
    >>> spec = QuantSpec(bits=8, granularity="per-token", dynamic=True)
    >>> spec.qmin, spec.qmax
    (-128, 127)
    >>> QuantSpec(bits=9)
    Traceback (most recent call last):
    ...
    ValueError: bits=9 is out of range; use an integer from 2 to 8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Granularity(str, Enum):
    """Which elements share one scale.

    * ``per-tensor``: one scale for the whole tensor (shape ``[]``).
    * ``per-channel``: weights: one scale per output row (shape ``[out, 1]``); activations: one
      scale per input feature (shape ``[in_features]``), folded into the weight's input columns.
    * ``per-token``: activations only, one scale per token row (shape ``[..., tokens, 1]``),
      computed at run time (dynamic).
    * ``per-group``: weights only, one scale per run of ``group_size`` input columns in each
      output row (shape ``[out, in // group_size, 1]``).
    """

    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"
    PER_TOKEN = "per-token"
    PER_GROUP = "per-group"


MIN_BITS = 2
MAX_BITS = 8


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is fake-quantized.

    Args:
        bits: integer width, 2 to 8.
        symmetric: signed grid with zero point 0 (True) or unsigned grid with a zero point.
        granularity: a :class:`Granularity` value or its string.
        dynamic: compute the scale from each input at run time instead of holding it.
        group_size: columns per group, required for ``per-group``.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = Granularity.PER_TENSOR
    dynamic: bool = False
    group_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits={self.bits} is out of range; use an integer from {MIN_BITS} to {MAX_BITS}")
        try:
            granularity = Granularity(self.granularity)
        except ValueError:
            choices = ", ".join(g.value for g in Granularity)
            raise ValueError(f"granularity {self.granularity!r} is unknown; use one of {choices}") from None
        object.__setattr__(self, "granularity", granularity)
        if granularity is Granularity.PER_TOKEN and not self.dynamic:
            raise ValueError("granularity per-token needs dynamic=True: a token's scale is only known at run time")
        if granularity is Granularity.PER_GROUP:
            if self.group_size is None or self.group_size < 1:
                raise ValueError(f"group_size={self.group_size} is invalid for per-group; set a positive group size")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size} is only used with per-group; drop it or use per-group")

    @property
    def qmin(self) -> int:
        """Smallest integer on the grid."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer on the grid."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def describe(self) -> str:
        """Short human-readable form, e.g. ``int8 sym per-tensor static``."""
        kind = "dynamic" if self.dynamic else "static"
        sym = "sym" if self.symmetric else "asym"
        return f"int{self.bits} {sym} {self.granularity.value} {kind}"


OBSERVER_NAMES = ("minmax", "mean-max", "percentile")


@dataclass(frozen=True)
class QuantConfig:
    """A model-wide scheme: weight quantization, activation quantization and scale options.

    Args:
        weight: spec of every patched linear's weight (RTN unless a method says otherwise).
        activation: spec of the input quantizers; ``None`` keeps activations in float.
        observer: calibration statistic for static scales: ``minmax`` (global abs-max over all
            samples), ``mean-max`` (mean over samples of each sample's abs-max; SASQ's init) or
            ``percentile``.
        percentile: the percentile (0-100] of ``|x|`` used by the ``percentile`` observer.
        lsq_grad_scale: multiply each scale's gradient by ``1 / sqrt(N * qmax)`` with N the
            number of elements one scale covers per token (LSQ, Esser et al. 2020).
        scale_parametrization: ``log`` trains ``log(scale)`` so the scale stays positive and
            optimiser steps are relative; ``linear`` trains the scale itself, clamped to
            ``[min_scale, max_scale]`` in the forward pass and after every optimiser step.
        quantize_lm_head: also quantize the output projection (kept in float by default).
    """

    weight: QuantSpec = field(default_factory=lambda: QuantSpec(bits=8, granularity=Granularity.PER_CHANNEL))
    activation: QuantSpec | None = field(default_factory=QuantSpec)
    observer: str = "mean-max"
    percentile: float = 99.99
    lsq_grad_scale: bool = False
    scale_parametrization: str = "log"
    quantize_lm_head: bool = False

    def __post_init__(self) -> None:
        w = self.weight
        if w.dynamic:
            raise ValueError("weight spec has dynamic=True; weights are quantized once, set dynamic=False")
        if w.granularity is Granularity.PER_TOKEN:
            raise ValueError("weight granularity per-token is meaningless; use per-channel, per-group or per-tensor")
        a = self.activation
        if a is not None and a.granularity is Granularity.PER_GROUP:
            raise ValueError("activation granularity per-group is not supported; use per-tensor, per-channel or per-token")
        if a is not None and a.granularity is Granularity.PER_CHANNEL and a.dynamic:
            raise ValueError("dynamic per-channel activations are not supported; use per-token for dynamic scales")
        if self.observer not in OBSERVER_NAMES:
            raise ValueError(f"observer {self.observer!r} is unknown; use one of {', '.join(OBSERVER_NAMES)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile} is out of range; use a value in (0, 100]")
        if self.scale_parametrization not in ("log", "linear"):
            raise ValueError(f"scale_parametrization {self.scale_parametrization!r} is unknown; use log or linear")
