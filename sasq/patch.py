"""Patching a LLaMA-family model: every decoder linear becomes a :class:`QLinear`.

Per decoder layer ``i`` there are four distinct linear inputs, so four input quantizers:

================  ===============================  ==================
quantizer name    linears reading that input        input
================  ===============================  ==================
``layers.i.qkv``  q_proj, k_proj, v_proj            input_layernorm output
``layers.i.o``    o_proj                            attention output
``layers.i.gate_up``  gate_proj, up_proj            post_attention_layernorm output
``layers.i.down`` down_proj                         SiLU(gate) * up
================  ===============================  ==================

plus ``lm_head`` when :attr:`QuantConfig.quantize_lm_head` is set. Grouped-query attention and
tied embeddings need nothing special: each linear's weight is copied and quantized on its own,
so a tied ``lm_head`` left in float keeps sharing the float embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from torch import nn

from sasq.qlinear import QLinear
from sasq.quantizer import ActivationQuantizer
from sasq.spec import QuantConfig

log = logging.getLogger(__name__)

QUANTIZER_GROUPS = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o": ("self_attn", ("o_proj",)),
    "gate_up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the decoder layers of a Hugging Face LLaMA-family causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__} has no model.layers; only LLaMA-family causal LMs "
            f"(LlamaForCausalLM and look-alikes) can be patched"
        )
    return layers


def patch_model(model: nn.Module, config: QuantConfig) -> dict[str, ActivationQuantizer]:
    """Replace the decoder linears (and optionally ``lm_head``) by :class:`QLinear`, in place.

    Weights are quantized once by RTN with ``config.weight``. A linear already patched, or one
    that a transform replaced with a :class:`TransformedLinear`, keeps its input transform.

    Returns:
        The input quantizers by name, in layer order (empty when ``config.activation`` is None).
    """
    quantizers: dict[str, ActivationQuantizer] = {}
    for index, layer in enumerate(decoder_layers(model)):
        for group, (parent_name, linear_names) in QUANTIZER_GROUPS.items():
            parent = getattr(layer, parent_name)
            linears = [getattr(parent, name) for name in linear_names]
            if any(isinstance(linear, QLinear) for linear in linears):
                raise RuntimeError(f"layer {index} is already patched; load a fresh model before patching again")
            quantizer = _make_quantizer(config, f"layers.{index}.{group}", linears[0].in_features)
            if quantizer is not None:
                quantizers[quantizer.name] = quantizer
            for name, linear in zip(linear_names, linears, strict=True):
                setattr(parent, name, _wrap(linear, config, quantizer))
    if config.quantize_lm_head:
        head = model.get_output_embeddings()
        quantizer = _make_quantizer(config, "lm_head", head.in_features)
        if quantizer is not None:
            quantizers[quantizer.name] = quantizer
        model.set_output_embeddings(_wrap(head, config, quantizer))
        model.config.tie_word_embeddings = False
    log.info("patched %d input quantizers (%s)", len(quantizers), config.activation.describe() if config.activation else "float")
    return quantizers


def _make_quantizer(config: QuantConfig, name: str, channels: int) -> ActivationQuantizer | None:
    if config.activation is None:
        return None
    return ActivationQuantizer(
        config.activation,
        name=name,
        num_channels=channels,
        parametrization=config.scale_parametrization,
        lsq_grad_scale=config.lsq_grad_scale,
    )


def _wrap(linear: nn.Module, config: QuantConfig, quantizer: ActivationQuantizer | None) -> QLinear:
    transform = getattr(linear, "input_transform", None)
    prequantized = getattr(linear, "quantized_weight", None)
    return QLinear(linear, config.weight, quantizer, input_transform=transform, quantized_weight=prequantized)


def iter_qlinears(model: nn.Module) -> Iterator[tuple[str, QLinear]]:
    """Yield every :class:`QLinear` of the model with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, QLinear):
            yield name, module


def find_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """Return the distinct input quantizers of a patched model, by name, in module order."""
    found: dict[str, ActivationQuantizer] = {}
    for _, module in iter_qlinears(model):
        quantizer = module.input_quantizer
        if quantizer is not None and quantizer.name not in found:
            found[quantizer.name] = quantizer
    return found


def set_quantization_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every input quantizer of the model on or off (weights stay quantized)."""
    for quantizer in find_quantizers(model).values():
        quantizer.enabled = enabled
