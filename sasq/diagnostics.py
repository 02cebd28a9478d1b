"""Per-quantizer error breakdown: where static scales clip and how much error each one adds.

For every input quantizer, over the given windows (with the whole model quantized, so each
quantizer sees the inputs it meets at inference):

* ``clip_fraction``: share of elements outside the representable range ``[s*(qmin-z), s*(qmax-z)]``;
* ``abs_max`` and ``range_max``: the largest ``|x|`` seen and the largest representable magnitude;
* ``rel_error``: ``||Q(x) - x||^2 / ||x||^2``, split into ``clip_error`` (from clipped elements)
  and ``round_error`` (from the rest); the two add up to ``rel_error``.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sasq.patch import iter_qlinears
from sasq.quantizer import ActivationQuantizer, fake_quantize


@torch.no_grad()
def quantizer_errors(model: nn.Module, quantizers: dict[str, ActivationQuantizer], windows: Tensor) -> list[dict]:
    """Return one dict per quantizer (see the module docstring), in layer order."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    first_reader = {}
    for _, linear in iter_qlinears(model):
        quantizer = linear.input_quantizer
        if quantizer is not None and quantizer.name not in first_reader:
            first_reader[quantizer.name] = linear

    def make_hook(quantizer: ActivationQuantizer, transform):
        def hook(_module, inputs):
            x = inputs[0]
            if transform is not None:
                x = transform(x)
            x = x.float()
            scale, zero_point = quantizer.qparams(x)
            scale, zero_point = scale.float(), zero_point.float()
            low, high = scale * (quantizer.spec.qmin - zero_point), scale * (quantizer.spec.qmax - zero_point)
            clipped = (x < low) | (x > high)
            error = (fake_quantize(x, scale, zero_point, quantizer.spec.qmin, quantizer.spec.qmax) - x).pow(2)
            stats = totals[quantizer.name]
            stats["elements"] += x.numel()
            stats["clipped"] += float(clipped.sum())
            stats["energy"] += float(x.pow(2).sum())
            stats["clip_error"] += float(error[clipped].sum())
            stats["round_error"] += float(error[~clipped].sum())
            stats["abs_max"] = max(stats["abs_max"], float(x.abs().max()))
            stats["range_max"] = max(stats["range_max"], float(torch.maximum(low.abs(), high.abs()).max()))

        return hook

    handles = [
        linear.register_forward_pre_hook(make_hook(quantizers[name], linear.input_transform))
        for name, linear in first_reader.items()
        if name in quantizers
    ]
    try:
        device = next(model.parameters()).device
        for row in tqdm(range(windows.shape[0]), desc="diagnose", unit="window"):
            model(windows[row : row + 1].to(device))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name in quantizers:
        stats = totals[name]
        energy = max(stats["energy"], 1e-30)
        rows.append(
            {
                "quantizer": name,
                "clip_fraction": stats["clipped"] / max(stats["elements"], 1),
                "abs_max": stats["abs_max"],
                "range_max": stats["range_max"],
                "rel_error": (stats["clip_error"] + stats["round_error"]) / energy,
                "clip_error": stats["clip_error"] / energy,
                "round_error": stats["round_error"] / energy,
            }
        )
    return rows
