"""A linear layer with a frozen quantized weight and a (possibly shared) input quantizer.

Two forward paths, by the input quantizer's granularity:

* per-tensor static or per-token dynamic: ``y = Q_w(W) . Q_a(x)``. ``Q_w(W)`` is computed once
  (RTN) at construction and stored as the frozen ``weight``.
* per-channel static (scale ``s``, shape ``[in_features]``): ``y = Q_w(W diag(s)) . clamp(round(x / s))``,
  the form an integer GEMM can run once ``diag(s)`` is folded into the weight's input columns.
  ``weight`` then holds the float ``W``, and ``Q_w(W diag(s))`` is recomputed from the current
  ``s`` in every forward pass (and cached while ``s`` does not change).

An optional ``input_transform`` (an online rotation, for instance) is applied before quantizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasq.quantizer import ActivationQuantizer, fake_quantize_weight
from sasq.spec import QuantSpec


class TransformedLinear(nn.Linear):
    """A float ``nn.Linear`` that applies ``input_transform`` to its input first.

    Model transforms (QuaRot's online Hadamard on the down_proj input, for example) use it to
    mark where a run-time transform sits; :func:`sasq.patch.patch_model` keeps the transform in
    front of the input quantizer.
    """

    def __init__(self, linear: nn.Linear, input_transform: nn.Module) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        self.weight = linear.weight
        self.bias = linear.bias
        self.input_transform = input_transform

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_transform(x), self.weight, self.bias)


class QLinear(nn.Module):
    """Quantized replacement of an ``nn.Linear``.

    Args:
        linear: the float layer; its weight is copied, never modified.
        weight_spec: how the weight is quantized (RTN).
        input_quantizer: activation quantizer, shared between layers that read the same input;
            ``None`` leaves the input in float (weight-only quantization).
        input_transform: module applied to the input before the quantizer, or ``None``.
        quantized_weight: a weight already quantized by another algorithm (GPTQ); stored as is.
    """

    def __init__(
        self,
        linear: nn.Linear,
        weight_spec: QuantSpec,
        input_quantizer: ActivationQuantizer | None,
        input_transform: nn.Module | None = None,
        quantized_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_spec = weight_spec
        self.input_quantizer = input_quantizer
        self.input_transform = input_transform
        self.folded = input_quantizer is not None and input_quantizer.folds_into_weight
        if self.folded and quantized_weight is not None:
            raise ValueError("a pre-quantized weight cannot take folded per-channel scales; use per-tensor scales")
        with torch.no_grad():
            source = linear.weight.detach()
            if self.folded:
                stored = source.clone()
            elif quantized_weight is not None:
                stored = quantized_weight.to(source)
            else:
                stored = fake_quantize_weight(source.float(), weight_spec).to(source.dtype)
        self.weight = nn.Parameter(stored, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self._folded_cache: tuple[int, Tensor] | None = None
        self._unfolded_cache: Tensor | None = None

    def folded_weight(self) -> Tensor:
        """``Q_w(W diag(s))`` for the current per-channel scale ``s`` (folded path only)."""
        assert self.input_quantizer is not None
        scale = self.input_quantizer.scale()
        if not torch.is_grad_enabled():
            key = self.input_quantizer.raw_scale._version
            if self._folded_cache is not None and self._folded_cache[0] == key:
                return self._folded_cache[1]
        weight = fake_quantize_weight(self.weight.float() * scale.float(), self.weight_spec).to(self.weight.dtype)
        if not torch.is_grad_enabled():
            self._folded_cache = (key, weight.detach())
        return weight

    def unfolded_weight(self) -> Tensor:
        """``Q_w(W)`` without any activation scale (folded path with its quantizer off)."""
        if self._unfolded_cache is None:
            with torch.no_grad():
                self._unfolded_cache = fake_quantize_weight(self.weight.float(), self.weight_spec).to(self.weight.dtype)
        return self._unfolded_cache

    def forward(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        quantizer = self.input_quantizer
        active = quantizer is not None and quantizer.enabled and quantizer.observer is None
        if self.folded and active:
            return F.linear(quantizer.to_grid(x).to(x.dtype), self.folded_weight(), self.bias)
        if self.folded:
            # Calibrating or quantization switched off: float input, weight quantized without s.
            if quantizer is not None and quantizer.observer is not None:
                quantizer(x)
            return F.linear(x, self.unfolded_weight(), self.bias)
        if quantizer is not None:
            x = quantizer(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        name = self.input_quantizer.name if self.input_quantizer is not None else "none"
        return (
            f"in={self.in_features}, out={self.out_features}, weight={self.weight_spec.describe()}, "
            f"input_quantizer={name}, folded={self.folded}"
        )
