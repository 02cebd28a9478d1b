"""QuaRot (Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", 2024) for LLaMA-family models.

:func:`rotate_model` changes a float model in place into a mathematically identical one whose
linear inputs are rotated by orthogonal (Hadamard-type, see :mod:`baselines.hadamard`) matrices:

1. untie ``lm_head`` from the embedding when they share a tensor, because they are rotated on
   different sides;
2. fuse every RMSNorm weight into the next linears' input columns and set it to 1, so the
   norm becomes ``x / rms(x)``, which commutes with any orthogonal ``Q`` (``rms(xQ) = rms(x)``);
3. rotate the residual stream by a random Hadamard ``Q`` of the hidden size: embedding rows
   ``E <- E Q``; q/k/v, gate/up and ``lm_head`` weights ``W <- W Q``; o_proj and down_proj
   weights (and biases) ``W <- Qᵀ W``;
4. online rotation of the down_proj input over the full intermediate size: ``W_down <- W_down H``
   and the layer applies ``x -> x H`` at run time (a :class:`~sasq.qlinear.TransformedLinear`);
5. attention values: a Hadamard ``H_d`` of head_dim applied per head offline to the v_proj
   outputs and to the o_proj input columns (exact because attention mixes tokens, not
   channels, and every query head of a GQA group reads the same rotated value head), plus an
   online rotation across heads in front of o_proj, so that o_proj's input is rotated by
   ``R_heads ⊗ H_d`` as in QuaRot. A head count without a constructible Hadamard matrix (9 in
   SmolLM2-135M) gets the seeded random orthogonal block of :mod:`baselines.hadamard`.

NOTE: QuaRot's KV-cache quantization (an online Hadamard on queries and keys after RoPE) is
not implemented; keys and values stay in float here.

Activations are quantized dynamically per token (QuaRot's setting, ``quarot-dynamic``) or with
static per-tensor scales from the global calibration abs-max (``quarot-static``);
``sasq-quarot`` trains SASQ's static scales on the rotated model. Weights are RTN, or GPTQ with
``Scheme(weight_quantizer="gptq")``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from baselines.hadamard import HeadMixing, Rotation
from sasq.method import Method, register_method
from sasq.patch import decoder_layers
from sasq.qlinear import TransformedLinear

log = logging.getLogger(__name__)

ROTATION_SEED = 0


@torch.no_grad()
def untie_embeddings(model: nn.Module) -> None:
    """Give ``lm_head`` its own copy of the weight when it shares the embedding's tensor."""
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    if head.weight is embedding.weight or head.weight.data_ptr() == embedding.weight.data_ptr():
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=embedding.weight.requires_grad)
        log.info("untied lm_head from the embedding before rotating")
    model.config.tie_word_embeddings = False


@torch.no_grad()
def _scale_input_columns(linear: nn.Linear, scale: Tensor) -> None:
    linear.weight.copy_((linear.weight.double() * scale.double()).to(linear.weight.dtype))


@torch.no_grad()
def fuse_rmsnorms(model: nn.Module) -> None:
    """Fold every RMSNorm weight into the input columns of the linears it feeds, then set it to 1."""
    for layer in decoder_layers(model):
        attention, mlp = layer.self_attn, layer.mlp
        pairs = (
            (layer.input_layernorm, (attention.q_proj, attention.k_proj, attention.v_proj)),
            (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
        )
        for norm, linears in pairs:
            for linear in linears:
                _scale_input_columns(linear, norm.weight)
            norm.weight.fill_(1.0)
    norm = model.model.norm
    _scale_input_columns(model.get_output_embeddings(), norm.weight)
    norm.weight.fill_(1.0)


@torch.no_grad()
def _rotate_input(weight: Tensor, rotation: nn.Module) -> None:
    """``W <- W R`` for a weight ``[out, in]`` (or embedding rows) whose last dimension is rotated."""
    weight.copy_(rotation(weight.double()).to(weight.dtype))


@torch.no_grad()
def _rotate_output(linear: nn.Linear, rotation: nn.Module) -> None:
    """``W <- Rᵀ W`` and ``b <- b R``: the linear's output is rotated by ``R``."""
    linear.weight.copy_(rotation(linear.weight.double().T).T.to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_(rotation(linear.bias.double()).to(linear.bias.dtype))


class _PerHead(nn.Module):
    """Applies one rotation of ``head_dim`` to every head of a ``[..., heads * head_dim]`` tensor."""

    def __init__(self, rotation: Rotation) -> None:
        super().__init__()
        self.rotation = rotation

    def forward(self, x: Tensor) -> Tensor:
        size = self.rotation.size
        return self.rotation(x.reshape(*x.shape[:-1], x.shape[-1] // size, size)).reshape(x.shape)


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = ROTATION_SEED, online_head_mixing: bool = True) -> None:
    """Apply QuaRot's rotations to a float LLaMA-family model in place (see the module docstring).

    The result computes the same function as the input up to floating-point rounding. The
    rotations are seeded, so two calls with the same seed give bit-identical models.
    """
    config = model.config
    layers = decoder_layers(model)
    hidden = config.hidden_size
    attention = layers[0].self_attn
    head_dim = attention.head_dim
    num_heads = config.num_attention_heads
    if num_heads * head_dim != attention.o_proj.in_features:
        raise ValueError(f"o_proj has {attention.o_proj.in_features} inputs, not heads x head_dim = {num_heads} x {head_dim}")

    untie_embeddings(model)
    fuse_rmsnorms(model)

    residual = Rotation(hidden, seed=seed, random_signs=True)
    intermediate = Rotation(config.intermediate_size, seed=seed)
    per_head = _PerHead(Rotation(head_dim, seed=seed))
    log.info("QuaRot rotations: residual %s; down_proj input %s; per head %s", residual.extra_repr(), intermediate.extra_repr(), per_head.rotation.extra_repr())

    _rotate_input(model.get_input_embeddings().weight, residual)
    for layer in layers:
        attention, mlp = layer.self_attn, layer.mlp
        for linear in (attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj):
            _rotate_input(linear.weight, residual)
        for linear in (attention.o_proj, mlp.down_proj):
            _rotate_output(linear, residual)

        _rotate_input(mlp.down_proj.weight, intermediate)
        mlp.down_proj = TransformedLinear(mlp.down_proj, intermediate)

        _rotate_output(attention.v_proj, per_head)
        _rotate_input(attention.o_proj.weight, per_head)
        if online_head_mixing:
            mixing = HeadMixing(num_heads, head_dim, seed=seed)
            _rotate_input(attention.o_proj.weight, mixing)
            attention.o_proj = TransformedLinear(attention.o_proj, mixing)
    _rotate_input(model.get_output_embeddings().weight, residual)


def quarot_transform(model: nn.Module, calib_windows: Tensor | None, seed: int = ROTATION_SEED) -> None:
    """Method transform: rotate the model; the calibration windows are not needed for the rotation itself."""
    rotate_model(model, seed=seed)


QUAROT_DYNAMIC = register_method(
    Method("quarot-dynamic", "QuaRot rotations, RTN weights, dynamic per-token activations", "dynamic", transform=quarot_transform)
)
QUAROT_STATIC = register_method(
    Method("quarot-static", "QuaRot rotations, static per-tensor scales from the global abs-max", "static", observer="minmax", transform=quarot_transform)
)
SASQ_QUAROT = register_method(
    Method(
        "sasq-quarot",
        "SASQ scales trained on the QuaRot-rotated model (mean-of-max init)",
        "static",
        observer="mean-max",
        trains=True,
        transform=quarot_transform,
    )
)
