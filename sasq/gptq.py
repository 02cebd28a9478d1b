"""GPTQ weight quantization (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).

For a linear with weight ``W [out, in]`` and calibration inputs ``X [in, tokens]``, GPTQ
minimises ``||W X - Q X||²`` column by column. Let ``H = 2 X Xᵀ`` (damped by 1 % of its mean
diagonal) and ``U`` the upper Cholesky factor of ``H⁻¹``. Column ``i`` is rounded to the grid, and
its error ``(w_i - q_i) / U_ii`` is spread over the columns not yet quantized through row ``i``
of ``U``. Updates are applied lazily in blocks of 128 columns. The grid is the same as RTN's
(:func:`sasq.quantizer.weight_qparams`): symmetric per output channel, or per group, with the
qparams computed once from the float weight before the error updates (GPTQ's ``static_groups``).

:func:`gptq_quantize_model` runs the standard sequential procedure over the decoder: the inputs
of layer ``i`` are the outputs of layers ``< i`` with their weights already quantized, and inside
a layer the linears are quantized in the order q/k/v, o, gate/up, down, each group seeing the
outputs of the groups quantized before it. Activations stay in float throughout.
Each quantized linear gets ``weight`` replaced by the de-quantized GPTQ values and a
``quantized_weight`` attribute, which :func:`sasq.patch.patch_model` stores in the
:class:`~sasq.qlinear.QLinear` instead of re-quantizing by RTN.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sasq.patch import decoder_layers
from sasq.quantizer import weight_qparams
from sasq.spec import Granularity, QuantSpec

log = logging.getLogger(__name__)

BLOCK_SIZE = 128
PERCENT_DAMP = 0.01
SEQUENTIAL_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)
CHOLESKY_RETRIES = 3


class HessianAccumulator:
    """Running ``H = 2/N sum_t x_t x_tᵀ`` over the ``N`` input rows seen so far, in float64 or float32."""

    def __init__(self, in_features: int, dtype: torch.dtype, device: torch.device) -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=dtype, device=device)
        self.samples = 0

    def add(self, x: Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).to(self.hessian.dtype)
        count = rows.shape[0]
        self.hessian *= self.samples / (self.samples + count)
        self.samples += count
        rows = rows * math.sqrt(2.0 / self.samples)
        self.hessian += rows.T @ rows


def _column_qparams(weight: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Per-column scale and zero point ``[out, in]`` (broadcast from RTN's per-channel or per-group qparams)."""
    scale, zero_point = weight_qparams(weight, spec)
    if spec.granularity is Granularity.PER_GROUP:
        size = spec.group_size
        scale = scale.expand(-1, -1, size).reshape(weight.shape)
        zero_point = zero_point.expand(-1, -1, size).reshape(weight.shape)
    else:
        scale = scale.expand_as(weight)
        zero_point = zero_point.expand_as(weight)
    return scale, zero_point


def _quantize_column(w: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    return (torch.clamp(torch.round(w / scale) + zero_point, spec.qmin, spec.qmax) - zero_point) * scale


def _upper_cholesky_of_inverse(hessian: Tensor, percent_damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + damp I)⁻¹``, increasing the damping tenfold if ``H`` is not positive definite."""
    damp = percent_damp * torch.mean(torch.diag(hessian))
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(CHOLESKY_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if info == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info == 0:
                return upper
        log.warning("GPTQ Hessian is not positive definite with damping %.3g (try %d); retrying with 10x damping", float(damp), attempt + 1)
        damp = damp * 10
    raise RuntimeError(f"GPTQ Cholesky failed after {CHOLESKY_RETRIES} damping increases; use more calibration data")


@torch.no_grad()
def gptq_quantize_weight(
    weight: Tensor,
    hessian: Tensor,
    spec: QuantSpec,
    block_size: int = BLOCK_SIZE,
    percent_damp: float = PERCENT_DAMP,
    act_order: bool = False,
) -> Tensor:
    """GPTQ-quantize a ``[out, in]`` weight given its input Hessian ``[in, in]``.

    Args:
        weight: the float weight (not modified).
        hessian: ``2 X Xᵀ / N`` of the layer's calibration inputs.
        spec: the weight grid (per-channel or per-group, as for RTN).
        block_size: columns per lazy-update block.
        percent_damp: damping added to the diagonal, as a fraction of its mean.
        act_order: quantize columns in order of decreasing Hessian diagonal.

    Returns:
        The de-quantized weight on the grid, in ``weight``'s dtype.
    """
    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(work_dtype).clone()
    h = hessian.to(work_dtype).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale, zero_point = _column_qparams(w, spec)

    permutation = None
    if act_order:
        permutation = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, permutation], h[permutation][:, permutation]
        scale, zero_point = scale[:, permutation], zero_point[:, permutation]

    h_inv = _upper_cholesky_of_inverse(h, percent_damp)
    quantized = torch.zeros_like(w)
    columns = w.shape[1]
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        h_inv_block = h_inv[start:end, start:end]
        for i in range(end - start):
            column = block[:, i]
            q = _quantize_column(column, scale[:, start + i], zero_point[:, start + i], spec)
            quantized[:, start + i] = q
            error = (column - q) / h_inv_block[i, i]
            block[:, i:] -= error.unsqueeze(1) @ h_inv_block[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]

    if permutation is not None:
        quantized = quantized[:, torch.argsort(permutation)]
    return quantized.to(weight.dtype)


class _LayerInputsCaptured(Exception):
    pass


@torch.no_grad()
def _capture_first_layer_inputs(model: nn.Module, windows: Tensor) -> tuple[list[Tensor], list[dict]]:
    """Hidden states and keyword arguments (mask, position embeddings) entering decoder layer 0, one entry per window."""
    first = decoder_layers(model)[0]
    inputs: list[Tensor] = []
    kwargs_list: list[dict] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs.append(args[0] if args else kwargs.pop("hidden_states"))
        kwargs_list.append({**kwargs, "use_cache": False})
        raise _LayerInputsCaptured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for row in range(windows.shape[0]):
            try:
                model(windows[row : row + 1].to(device), use_cache=False)
            except _LayerInputsCaptured:
                pass
    finally:
        handle.remove()
    return inputs, kwargs_list


def _layer_output(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    windows: Tensor,
    spec: QuantSpec,
    block_size: int = BLOCK_SIZE,
    percent_damp: float = PERCENT_DAMP,
    act_order: bool = False,
) -> dict[str, float]:
    """Quantize every decoder linear of a float model by GPTQ, layer by layer, in place.

    ``lm_head`` is not touched (with ``quantize_lm_head`` the patcher quantizes it by RTN).
    Linears carrying an ``input_transform`` (QuaRot's online rotations) get their Hessian from
    the transformed input, the input their weight actually multiplies.

    Returns:
        The squared output error ``||(W - Q) X||²`` averaged over calibration tokens, per linear name.
    """
    inputs, kwargs_list = _capture_first_layer_inputs(model, windows)
    errors: dict[str, float] = {}
    layers = decoder_layers(model)
    for index, layer in enumerate(tqdm(layers, desc="GPTQ", unit="layer")):
        for names in SEQUENTIAL_GROUPS:
            linears = {name: layer.get_submodule(name) for name in names}
            accumulators = {}
            hooks = []
            for name, linear in linears.items():
                weight = linear.weight
                accumulators[name] = HessianAccumulator(linear.in_features, torch.float64 if weight.dtype == torch.float64 else torch.float32, weight.device)
                hooks.append(linear.register_forward_pre_hook(_hessian_hook(accumulators[name])))
            try:
                for hidden, kwargs in zip(inputs, kwargs_list, strict=True):
                    layer(hidden, **kwargs)
            finally:
                for hook in hooks:
                    hook.remove()
            for name, linear in linears.items():
                hessian = accumulators[name].hessian
                quantized = gptq_quantize_weight(linear.weight, hessian, spec, block_size, percent_damp, act_order)
                delta = (linear.weight.detach() - quantized).to(hessian.dtype)
                error = float(torch.sum((delta @ hessian) * delta) / 2)
                errors[f"layers.{index}.{name}"] = error
                log.info("GPTQ layers.%d.%s: output error %.4g per token", index, name, error)
                linear.weight.copy_(quantized)
                linear.quantized_weight = linear.weight.detach()
        inputs = [_layer_output(layer(hidden, **kwargs)) for hidden, kwargs in zip(inputs, kwargs_list, strict=True)]
    return errors


def _hessian_hook(accumulator: HessianAccumulator):
    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0]
        transform = getattr(module, "input_transform", None)
        if transform is not None:
            x = transform(x)
        accumulator.add(x.detach())

    return hook
