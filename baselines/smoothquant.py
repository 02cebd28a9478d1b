"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for LLMs", ICML 2023).

Per input channel ``j`` of the linears that read an RMSNorm output, the smoothing factor is

    s_j = max|X_j|**alpha / max|W_j|**(1 - alpha),

with ``max|X_j|`` the abs-max of channel ``j`` over every calibration token and ``max|W_j|`` the
abs-max of input column ``j`` over the output rows of all linears reading that norm (both
clamped to at least 1e-5, as in the authors' ``smooth_ln_fcs``). The norm weight is divided by
``s`` and the linears' input columns multiplied by it, so the float model computes the same
function while activation outliers move into the weights. For LLaMA the pairs are
``input_layernorm -> q/k/v_proj`` and ``post_attention_layernorm -> gate/up_proj`` (the authors'
``smooth_lm`` for ``LlamaDecoderLayer``); o_proj and down_proj inputs are not smoothed.

Methods: ``smoothquant-dynamic`` (per-token dynamic activations, as the authors' repository
evaluates), ``smoothquant-static`` (one static per-tensor scale per input from the global
calibration abs-max, as TensorRT-LLM and ModelOpt deploy it) and ``sasq-smoothquant`` (SASQ's
scales trained on the smoothed model).
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sasq.method import Method, register_method
from sasq.patch import decoder_layers

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.85
MIN_ABSMAX = 1e-5


def _smoothing_pairs(layer: nn.Module) -> dict[str, tuple[nn.Module, tuple[nn.Linear, ...]]]:
    attention, mlp = layer.self_attn, layer.mlp
    return {
        "qkv": (layer.input_layernorm, (attention.q_proj, attention.k_proj, attention.v_proj)),
        "gate_up": (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
    }


@torch.no_grad()
def collect_activation_absmax(model: nn.Module, windows: Tensor) -> dict[str, Tensor]:
    """Per-channel abs-max of each smoothed input over all calibration tokens.

    Returns a float64 tensor ``[hidden]`` per key ``layers.{i}.qkv`` and ``layers.{i}.gate_up``.
    """
    absmax: dict[str, Tensor] = {}
    hooks = []

    def record(key: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            channel_max = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).double()
            absmax[key] = channel_max if key not in absmax else torch.maximum(absmax[key], channel_max)

        return hook

    for index, layer in enumerate(decoder_layers(model)):
        for group, (_, linears) in _smoothing_pairs(layer).items():
            hooks.append(linears[0].register_forward_pre_hook(record(f"layers.{index}.{group}")))
    device = next(model.parameters()).device
    try:
        for row in tqdm(range(windows.shape[0]), desc="smoothquant statistics", unit="window"):
            model(windows[row : row + 1].to(device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return absmax


def smoothing_factors(activation_absmax: Tensor, linears: tuple[nn.Linear, ...], alpha: float) -> Tensor:
    """``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` in float64, ``max|W_j|`` over all the linears' rows."""
    weight_absmax = torch.cat([linear.weight.detach().abs().double() for linear in linears], dim=0).amax(dim=0)
    activation = activation_absmax.double().to(weight_absmax.device).clamp(min=MIN_ABSMAX)
    return (activation.pow(alpha) / weight_absmax.clamp(min=MIN_ABSMAX).pow(1 - alpha)).clamp(min=MIN_ABSMAX)


@torch.no_grad()
def smooth_model(model: nn.Module, activation_absmax: dict[str, Tensor], alpha: float = DEFAULT_ALPHA) -> dict[str, Tensor]:
    """Fold the smoothing factors into the RMSNorm weights and the following linears, in place.

    Returns the factors ``s`` by key (``layers.{i}.qkv`` / ``layers.{i}.gate_up``).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is out of range; use a migration strength in [0, 1]")
    factors = {}
    for index, layer in enumerate(decoder_layers(model)):
        for group, (norm, linears) in _smoothing_pairs(layer).items():
            key = f"layers.{index}.{group}"
            if key not in activation_absmax:
                raise KeyError(f"no activation statistics for {key}; collect them on this model first")
            scale = smoothing_factors(activation_absmax[key], linears, alpha)
            norm.weight.copy_((norm.weight.double() / scale).to(norm.weight.dtype))
            for linear in linears:
                linear.weight.copy_((linear.weight.double() * scale).to(linear.weight.dtype))
            factors[key] = scale
    log.info("smoothed %d RMSNorm/linear pairs with alpha=%.3g", len(factors), alpha)
    return factors


def smoothquant_transform(model: nn.Module, calib_windows: Tensor, alpha: float = DEFAULT_ALPHA) -> None:
    """Method transform: collect abs-max statistics on ``calib_windows``, then smooth the model."""
    smooth_model(model, collect_activation_absmax(model, calib_windows), alpha)


_transform = partial(smoothquant_transform, alpha=DEFAULT_ALPHA)

# NOTE: the smoothing factors come from the calibration windows of each run, so `sasq evaluate
# --scales` must use the same --calib-* options as the `sasq train` run that made the scales.
# Nothing checks this yet. Other options give another smoothed model under the trained scales.

SMOOTHQUANT_DYNAMIC = register_method(
    Method("smoothquant-dynamic", f"SmoothQuant (alpha={DEFAULT_ALPHA}), RTN weights, dynamic per-token activations", "dynamic", transform=_transform)
)
SMOOTHQUANT_STATIC = register_method(
    Method(
        "smoothquant-static",
        f"SmoothQuant (alpha={DEFAULT_ALPHA}), static per-tensor scales from the global abs-max",
        "static",
        observer="minmax",
        transform=_transform,
    )
)
SASQ_SMOOTHQUANT = register_method(
    Method(
        "sasq-smoothquant",
        f"SASQ scales trained on the SmoothQuant-smoothed model (alpha={DEFAULT_ALPHA}, mean-of-max init)",
        "static",
        observer="mean-max",
        trains=True,
        transform=_transform,
    )
)
