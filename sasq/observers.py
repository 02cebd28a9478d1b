"""Observers: accumulate activation statistics over calibration samples, then give qparams.

A calibration *sample* is one window (one row of a ``[batch, tokens, channels]`` input). Each
observer reduces every sample to a lower and an upper value (per tensor, or per channel for
per-channel specs) and combines the samples its own way:

* ``minmax``: the global extremes over all samples (static min-max, as torchao's and
  llm-compressor's default observers);
* ``mean-max``: the mean over samples of each sample's extremes (SASQ's initialisation: the
  average of the per-sample factors ``absmax / qmax``);
* ``percentile``: the mean over samples of each sample's ``p``-th percentile of ``|x|``
  (symmetric) or its ``100 - p`` and ``p`` percentiles of ``x`` (asymmetric).

Example:
    >>> import torch
    >>> from sasq.spec import QuantSpec
    >>> obs = make_observer("mean-max", QuantSpec(bits=8))
    >>> obs.update(torch.tensor([[[1.0, -2.0]], [[4.0, 0.0]]]))   # two samples
    >>> obs.compute()[0] * 127                                     # mean of 2 and 4
    tensor(3.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from sasq.quantizer import qparams_from_range
from sasq.spec import Granularity, QuantSpec

OBSERVERS: dict[str, type[Observer]] = {}


def register_observer(name: str):
    """Class decorator adding an observer to the registry under ``name``."""

    def add(cls: type[Observer]) -> type[Observer]:
        OBSERVERS[name] = cls
        cls.name = name
        return cls

    return add


def make_observer(name: str, spec: QuantSpec, percentile: float = 99.99) -> Observer:
    """Build a registered observer for ``spec``."""
    if name not in OBSERVERS:
        raise ValueError(f"observer {name!r} is unknown; use one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](spec, percentile=percentile)


class Observer:
    """Base class: per-sample reduction in :meth:`sample_range`, combination in subclasses."""

    name = "base"

    def __init__(self, spec: QuantSpec, percentile: float = 99.99) -> None:
        self.spec = spec
        self.percentile = percentile
        self.samples = 0

    @property
    def per_channel(self) -> bool:
        return self.spec.granularity is Granularity.PER_CHANNEL

    def _samples_view(self, x: Tensor) -> Tensor:
        """``x`` as ``[samples, tokens, channels]`` in float32."""
        x = x.float()
        if x.dim() == 2:
            x = x.unsqueeze(0)
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def sample_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample lower and upper values: ``[samples]`` or ``[samples, channels]``."""
        view = self._samples_view(x)
        if self.per_channel:
            return view.amin(dim=1), view.amax(dim=1)
        flat = view.reshape(view.shape[0], -1)
        return flat.amin(dim=1), flat.amax(dim=1)

    def update(self, x: Tensor) -> None:
        lo, hi = self.sample_range(x)
        self.accumulate(lo, hi)
        self.samples += lo.shape[0]

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        raise NotImplementedError

    def combined_range(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def compute(self) -> tuple[Tensor, Tensor]:
        """Scale and zero point from everything observed so far."""
        if self.samples == 0:
            raise RuntimeError(f"observer {self.name} saw no samples; the calibration input did not reach it")
        lo, hi = self.combined_range()
        return qparams_from_range(lo, hi, self.spec)


@register_observer("minmax")
class MinMaxObserver(Observer):
    """Global minimum and maximum over all samples."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99) -> None:
        super().__init__(spec, percentile)
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        batch_lo, batch_hi = lo.amin(dim=0), hi.amax(dim=0)
        self.lo = batch_lo if self.lo is None else torch.minimum(self.lo, batch_lo)
        self.hi = batch_hi if self.hi is None else torch.maximum(self.hi, batch_hi)

    def combined_range(self) -> tuple[Tensor, Tensor]:
        return self.lo, self.hi


@register_observer("mean-max")
class MeanMaxObserver(Observer):
    """Mean over samples of the per-sample extremes.

    For symmetric specs the per-sample value is the abs-max, so the scale is the mean of the
    per-sample factors ``absmax_i / qmax``.
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99) -> None:
        super().__init__(spec, percentile)
        self.lo_sum: Tensor | None = None
        self.hi_sum: Tensor | None = None

    def accumulate(self, lo: Tensor, hi: Tensor) -> None:
        if self.spec.symmetric:
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        lo_sum, hi_sum = lo.double().sum(dim=0), hi.double().sum(dim=0)
        self.lo_sum = lo_sum if self.lo_sum is None else self.lo_sum + lo_sum
        self.hi_sum = hi_sum if self.hi_sum is None else self.hi_sum + hi_sum

    def combined_range(self) -> tuple[Tensor, Tensor]:
        return (self.lo_sum / self.samples).float(), (self.hi_sum / self.samples).float()


@register_observer("percentile")
class PercentileObserver(MeanMaxObserver):
    """Mean over samples of per-sample percentiles (``percentile`` in (0, 100])."""

    def sample_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        view = self._samples_view(x)
        if not self.per_channel:
            view = view.reshape(view.shape[0], -1, 1)
        q = self.percentile / 100.0
        if self.spec.symmetric:
            hi = _quantile(view.abs(), q)
            lo = -hi
        else:
            lo, hi = _quantile(view, 1.0 - q), _quantile(view, q)
        if not self.per_channel:
            lo, hi = lo.squeeze(-1), hi.squeeze(-1)
        return lo, hi


def _quantile(view: Tensor, q: float) -> Tensor:
    """Quantile over dim 1 of ``[samples, tokens, channels]`` (nearest rank, any size)."""
    count = view.shape[1]
    rank = min(count, max(1, int(round(q * count))))
    return view.kthvalue(rank, dim=1).values
