"""Calibration: run windows through a patched model and set every static scale from an observer.

Calibration passes run with activation quantization switched off (inputs in float, weights
already quantized), so each quantizer sees the statistics of the float activations. Dynamic
quantizers need no calibration and are skipped.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sasq.observers import make_observer
from sasq.quantizer import ActivationQuantizer

log = logging.getLogger(__name__)


@torch.no_grad()
def calibrate(
    model: nn.Module,
    quantizers: dict[str, ActivationQuantizer],
    windows: Tensor,
    observer: str,
    percentile: float = 99.99,
    batch_size: int = 1,
) -> dict[str, Tensor]:
    """Set each static quantizer's scale from ``observer`` statistics over ``windows``.

    Args:
        model: the patched model.
        quantizers: its input quantizers by name.
        windows: calibration token ids ``[n, seqlen]``; each row is one observer sample.
        observer: registered observer name (``minmax``, ``mean-max``, ``percentile``).
        percentile: used by the ``percentile`` observer.
        batch_size: windows per forward pass.

    Returns:
        The new scales by quantizer name.
    """
    static = {name: q for name, q in quantizers.items() if q.is_static}
    if not static:
        return {}
    for quantizer in static.values():
        quantizer.observer = make_observer(observer, quantizer.spec, percentile)
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, windows.shape[0], batch_size), desc=f"calibrate ({observer})", unit="batch"):
            model(windows[start : start + batch_size].to(device))
        scales = {}
        for name, quantizer in static.items():
            scale, zero_point = quantizer.observer.compute()
            quantizer.set_scale(scale, zero_point)
            scales[name] = quantizer.scale().detach().clone()
    finally:
        for quantizer in static.values():
            quantizer.observer = None
    log.info("calibrated %d static quantizers on %d windows with %s", len(static), windows.shape[0], observer)
    return scales
