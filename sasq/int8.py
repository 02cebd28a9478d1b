"""Integer inference: int8 linears run by an integer GEMM, and a converter from patched models.

An :class:`Int8Linear` stores int8 weights ``q_w`` (``[out, in]``) with a per-output-channel float32
scale ``s_w``. Its input is quantized to int8 by an :class:`Int8InputQuantizer` in one of three modes:

* ``static``: one held per-tensor scale ``s`` (from SASQ training or calibration),
  ``q_x = clamp(round(x / s))``;
* ``static-per-channel``: a held per-input-feature scale folded into the weight
  (``q_w = Q_w(W diag(s))``), ``q_x = clamp(round(x / s))``, with no activation scale left to
  apply afterwards;
* ``dynamic``: a per-token (or per-tensor) scale ``s = absmax(x) / qmax`` computed from each input.

The product ``q_x q_w^T`` runs in ``torch._int_mm`` (int8 inputs, exact int32 accumulation), and the
result is rescaled to float: ``y = acc * s * s_w + bias``. The quantize step and the rescale each
run as one ``torch.compile`` kernel when compilation works, else eagerly (logged once).

:func:`convert_to_int8` replaces every :class:`~sasq.qlinear.QLinear` of a patched model with an
:class:`Int8Linear` computing the same fake-quantized function. Linears that share one activation
quantizer (q/k/v, gate/up) share one :class:`Int8InputQuantizer`, which quantizes a given input
tensor once and hands the cached int8 tensor to the other linears.

Example:
    >>> import torch
    >>> from sasq.quantizer import ActivationQuantizer
    >>> from sasq.qlinear import QLinear
    >>> from sasq.spec import QuantSpec
    >>> quantizer = ActivationQuantizer(QuantSpec(bits=8), "x", 16)
    >>> quantizer.set_scale(torch.tensor(0.02))
    >>> layer = QLinear(torch.nn.Linear(16, 24), QuantSpec(bits=8, granularity="per-channel"), quantizer)
    >>> int8 = Int8Linear.from_qlinear(layer)
    >>> int8.qweight.dtype, tuple(int8.qweight.shape)
    (torch.int8, (24, 16))
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sasq.patch import iter_qlinears
from sasq.qlinear import QLinear
from sasq.quantizer import MAX_SCALE, MIN_SCALE, ActivationQuantizer, weight_qparams
from sasq.spec import Granularity

log = logging.getLogger(__name__)

# torch._int_mm on CUDA requires more than 16 rows ("self.size(0) needs to be greater than 16") and
# inner and output sizes that are multiples of 8. The CPU kernel of torch 2.13 takes any shape.
# NOTE: the CUDA path follows these documented limits but has not been run on a GPU yet.
CUDA_MIN_ROWS = 17
CUDA_PADDED_ROWS = 32
SIZE_MULTIPLE = 8

# Largest |q_w| * |q_x| summed over k stays below 2**31 while k <= 2**31 / (128 * 128).
MAX_IN_FEATURES = 2**31 // (128 * 128)

MODES = ("static", "static-per-channel", "dynamic")


class MaybeCompiled:
    """A function run through ``torch.compile`` while compilation is enabled and works, else eagerly.

    ``torch.compile`` reports a missing C++ compiler or Triton only on the first call, with
    backend-specific exception types, so the first failure switches this function to eager mode
    for the rest of the process and logs a warning.
    """

    enabled = True

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn
        self.compiled: Callable[..., object] | None = None
        self.failed = False

    def __call__(self, *args):
        if not MaybeCompiled.enabled or self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - inductor raises many types (BackendCompilerFailed, InductorError, ...)
            self.failed = True
            first_line = (str(err).splitlines() or [""])[0]
            log.warning("torch.compile of %s failed (%s: %s); running it eagerly from now on", self.fn.__name__, type(err).__name__, first_line)
            return self.fn(*args)


def set_compile(enabled: bool) -> None:
    """Switch ``torch.compile`` of the quantize and rescale kernels on or off for the process."""
    MaybeCompiled.enabled = enabled


def _quantize_static(x: Tensor, scale: Tensor, qmin: int, qmax: int, pad: int) -> Tensor:
    # Same arithmetic as the fake-quant path: x / scale in x's dtype, round half to even, clamp.
    q = torch.clamp(torch.round(x / scale.to(x.dtype)), qmin, qmax).to(torch.int8)
    return F.pad(q, (0, pad)) if pad else q


def _quantize_dynamic(x: Tensor, qmin: int, qmax: int, pad: int, per_token: bool) -> tuple[Tensor, Tensor]:
    # Same scale as sasq.quantizer.dynamic_qparams: max(|min|, |max|) / qmax in float32, clamped.
    absmax = x.abs().amax(dim=-1, keepdim=True) if per_token else x.abs().amax()
    scale = (absmax.float() / qmax).clamp(MIN_SCALE, MAX_SCALE).to(x.dtype)
    q = torch.clamp(torch.round(x / scale), qmin, qmax).to(torch.int8)
    return (F.pad(q, (0, pad)) if pad else q), scale.float()


def _rescale(acc: Tensor, input_scale: Tensor | None, weight_scale: Tensor, bias: Tensor | None, out_features: int, dtype: torch.dtype) -> Tensor:
    y = acc[:, :out_features].float() * weight_scale
    if input_scale is not None:
        y = y * input_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


quantize_static = MaybeCompiled(_quantize_static)
quantize_dynamic = MaybeCompiled(_quantize_dynamic)
rescale = MaybeCompiled(_rescale)


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """Exact int32 product of int8 ``a`` ``[m, k]`` and int8 ``b`` ``[k, n]`` by ``torch._int_mm``.

    On CUDA, inputs of 16 rows or fewer are padded with zero rows to meet the kernel's minimum and
    the padding is sliced off. ``k`` and ``n`` must already be multiples of 8 there.
    """
    rows = a.shape[0]
    if a.is_cuda and rows < CUDA_MIN_ROWS:
        padded = F.pad(a, (0, 0, 0, CUDA_PADDED_ROWS - rows))
        return torch._int_mm(padded, b)[:rows]
    return torch._int_mm(a, b)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class Int8InputQuantizer(nn.Module):
    """Quantizes a linear's input to int8, once per input tensor when shared between linears.

    Args:
        mode: ``static``, ``static-per-channel`` or ``dynamic`` (see the module docstring).
        in_features: input features; the int8 result is zero-padded to ``padded_features``.
        padded_features: ``in_features`` rounded up to the GEMM's size multiple.
        qmin, qmax: the symmetric integer grid (``-128, 127`` for 8 bits).
        scale: the static scale (``[]`` or ``[in_features]``); ``None`` for ``dynamic``.
        per_token: dynamic scales per token (True) or per tensor (False).
        name: the source quantizer's name, for messages.
    """

    def __init__(
        self,
        mode: str,
        in_features: int,
        padded_features: int,
        qmin: int,
        qmax: int,
        scale: Tensor | None,
        per_token: bool = True,
        name: str = "",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is unknown; use one of {', '.join(MODES)}")
        if (scale is None) != (mode == "dynamic"):
            raise ValueError(f"mode {mode} {'takes no' if mode == 'dynamic' else 'needs a'} static scale")
        self.mode = mode
        self.in_features = in_features
        self.padded_features = padded_features
        self.qmin = qmin
        self.qmax = qmax
        self.per_token = per_token
        self.name = name
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self._cache: tuple[weakref.ref, int, tuple[Tensor, Tensor | None]] | None = None
        self.cache_hits = 0

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return the int8 input ``[tokens, padded_features]`` and the activation scale to apply after the GEMM.

        ``x`` has shape ``[..., in_features]``. The activation scale is ``[]`` (static),
        ``[tokens, 1]`` (dynamic per token) or ``None`` (folded per-channel scales). A second
        call with the same, unmodified tensor returns the cached result.
        """
        if self._cache is not None:
            ref, version, result = self._cache
            if ref() is x and x._version == version:
                self.cache_hits += 1
                return result
        flat = x.reshape(-1, self.in_features)
        pad = self.padded_features - self.in_features
        if self.mode == "dynamic":
            result = quantize_dynamic(flat, self.qmin, self.qmax, pad, self.per_token)
        else:
            q = quantize_static(flat, self.scale, self.qmin, self.qmax, pad)
            result = (q, self.scale if self.mode == "static" else None)
        self._cache = (weakref.ref(x), x._version, result)
        return result

    def clear_cache(self) -> None:
        """Forget the last quantized input, so the next call quantizes again."""
        self._cache = None

    def extra_repr(self) -> str:
        return f"name={self.name}, mode={self.mode}, grid=[{self.qmin}, {self.qmax}], in={self.in_features}"


class Int8Linear(nn.Module):
    """A linear layer computing ``y = (q_x q_w^T) * s_x * s_w + bias`` with an integer GEMM.

    Args:
        qweight: int8 weight ``[out_features, in_features]``, zero-padded below to multiples of 8.
        weight_scale: float32 per-output-channel scale ``[out_features]``.
        bias: float bias ``[out_features]`` or ``None``.
        input_quantizer: the (possibly shared) :class:`Int8InputQuantizer`.
        out_features, in_features: the unpadded sizes.
        input_transform: module applied to the float input before quantizing, or ``None``.
    """

    def __init__(
        self,
        qweight: Tensor,
        weight_scale: Tensor,
        bias: Tensor | None,
        input_quantizer: Int8InputQuantizer,
        out_features: int,
        in_features: int,
        input_transform: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if qweight.dtype != torch.int8:
            raise TypeError(f"qweight has dtype {qweight.dtype}; pass an int8 tensor")
        if qweight.shape[1] != input_quantizer.padded_features:
            raise ValueError(f"qweight has {qweight.shape[1]} input columns but the input quantizer pads to {input_quantizer.padded_features}")
        if in_features > MAX_IN_FEATURES:
            raise ValueError(f"in_features={in_features} can overflow the int32 accumulator; use at most {MAX_IN_FEATURES}")
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().float().reshape(-1).clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.input_quantizer = input_quantizer
        self.input_transform = input_transform
        self._cpu_operand: tuple[int, Tensor] | None = None

    @classmethod
    def from_qlinear(
        cls,
        layer: QLinear,
        input_quantizer: Int8InputQuantizer | None = None,
    ) -> Int8Linear:
        """Build the integer equivalent of ``layer`` from its quantized weight and input quantizer.

        Raises:
            ValueError: the layer has no input quantizer, an asymmetric or per-group scheme, a
                disabled or uncalibrated quantizer, or a weight that is not on its RTN grid.
        """
        source = layer.input_quantizer
        _check_convertible(layer, source)
        with torch.no_grad():
            weight = layer.folded_weight() if layer.folded else layer.weight
            qweight, weight_scale = int8_weight(weight.float(), layer.weight_spec)
        padded_in = _round_up(layer.in_features, SIZE_MULTIPLE)
        padded_out = _round_up(layer.out_features, SIZE_MULTIPLE)
        qweight = F.pad(qweight, (0, padded_in - layer.in_features, 0, padded_out - layer.out_features))
        weight_scale = F.pad(weight_scale, (0, padded_out - layer.out_features))[: layer.out_features]
        if input_quantizer is None:
            input_quantizer = int8_input_quantizer(source, layer.in_features, padded_in)
        int8 = cls(qweight, weight_scale, layer.bias, input_quantizer, layer.out_features, layer.in_features, layer.input_transform)
        # Activation quantizers may live on another device than the weight; follow the weight.
        return int8.to(layer.weight.device)

    def gemm_weight(self) -> Tensor:
        """Return the weight as ``_int_mm``'s ``[in, out]`` operand, cached on CPU.

        CUDA gets the transposed view of the ``[out, in]`` buffer, the column-major layout cuBLASLt
        expects. On CPU a row-major copy took 5.3 ms against 6.5 ms for the view
        (256x2048x2048, torch 2.13, one x86_64 thread on a loaded machine), so a copy is cached.
        """
        if self.qweight.is_cuda:
            return self.qweight.t()
        key = self.qweight.data_ptr()
        if self._cpu_operand is None or self._cpu_operand[0] != key:
            self._cpu_operand = (key, self.qweight.t().contiguous())
        return self._cpu_operand[1]

    def forward(self, x: Tensor) -> Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        q, input_scale = self.input_quantizer.quantize(x)
        acc = int_mm(q, self.gemm_weight())
        y = rescale(acc, input_scale, self.weight_scale, self.bias, self.out_features, x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, input={self.input_quantizer.name} ({self.input_quantizer.mode})"


def _check_convertible(layer: QLinear, quantizer: ActivationQuantizer | None) -> None:
    spec = layer.weight_spec
    if quantizer is None:
        raise ValueError("weight-only QLinear (no input quantizer) has no integer input; keep it in float")
    if not spec.symmetric or spec.granularity not in (Granularity.PER_CHANNEL, Granularity.PER_TENSOR):
        raise ValueError(f"weight scheme {spec.describe()} has no int8 GEMM path; use symmetric per-channel or per-tensor weights")
    act = quantizer.spec
    if not act.symmetric:
        raise ValueError(f"quantizer {quantizer.name} is asymmetric ({act.describe()}); the int8 path needs symmetric activations")
    if quantizer.observer is not None or not quantizer.enabled:
        raise ValueError(f"quantizer {quantizer.name} is calibrating or disabled; finish calibration and enable it before converting")
    if not quantizer.initialized:
        raise ValueError(f"quantizer {quantizer.name} has no scale yet; calibrate or load scales before converting")


def int8_weight(weight: Tensor, spec) -> tuple[Tensor, Tensor]:
    """Recover the int8 weight and its per-output-channel scale ``[out]`` from an RTN-quantized weight.

    The abs-max of each row of a weight already on its RTN grid is ``qmax * s`` (up to one float
    rounding), so recomputing the RTN scale returns ``s`` and ``weight / s`` lies within 1e-3 of
    an integer.

    Raises:
        ValueError: some ``weight / s`` is further than 1e-3 from an integer, so the weight was
            not quantized by RTN with this spec (GPTQ weights, for example).
    """
    weight = weight.detach()
    scale, _ = weight_qparams(weight, spec)
    scale = scale.expand(weight.shape[0], 1) if scale.dim() == 0 else scale
    ratio = weight / scale
    q = torch.round(ratio)
    error = float((ratio - q).abs().max()) if weight.numel() else 0.0
    if error > 1e-3:
        raise ValueError(f"weight is not on its RTN grid (max |w/s - round(w/s)| = {error:.3g}); only RTN-quantized weights convert")
    q = q.clamp(spec.qmin, spec.qmax).to(torch.int8)
    return q, scale.reshape(-1).float()


def int8_input_quantizer(quantizer: ActivationQuantizer, in_features: int, padded_features: int) -> Int8InputQuantizer:
    """Build the integer-path counterpart of a checked :class:`ActivationQuantizer`."""
    spec = quantizer.spec
    common = {"in_features": in_features, "padded_features": padded_features, "qmin": spec.qmin, "qmax": spec.qmax, "name": quantizer.name}
    if quantizer.is_static:
        with torch.no_grad():
            scale = quantizer.scale().detach()
        mode = "static-per-channel" if quantizer.folds_into_weight else "static"
        return Int8InputQuantizer(mode, scale=scale, **common)
    return Int8InputQuantizer("dynamic", scale=None, per_token=spec.granularity is Granularity.PER_TOKEN, **common)


def convert_to_int8(model: nn.Module, share_inputs: bool = True) -> dict[str, int]:
    """Replace every :class:`QLinear` of ``model`` with an :class:`Int8Linear`, in place.

    Args:
        model: a model patched by :func:`sasq.patch.patch_model`, calibrated or with loaded scales.
        share_inputs: linears sharing one activation quantizer also share one
            :class:`Int8InputQuantizer`, so q/k/v quantize their common input once.

    Returns:
        Counts: ``linears`` converted and ``input_quantizers`` created.
    """
    shared: dict[int, Int8InputQuantizer] = {}
    converted = 0
    for name, layer in list(iter_qlinears(model)):
        source = layer.input_quantizer
        key = id(source)
        input_quantizer = shared.get(key) if share_inputs and layer.input_transform is None else None
        int8 = Int8Linear.from_qlinear(layer, input_quantizer)
        if share_inputs and layer.input_transform is None:
            shared.setdefault(key, int8.input_quantizer)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, int8)
        converted += 1
    quantizers = len({id(m) for m in model.modules() if isinstance(m, Int8InputQuantizer)})
    log.info("converted %d linears to int8 with %d input quantizers", converted, quantizers)
    return {"linears": converted, "input_quantizers": quantizers}


def cast_float_parts(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the float parameters and buffers of ``model`` to ``dtype``, except int8-path scales.

    ``model.to(dtype)`` would also cast the float32 weight and activation scales of the int8
    layers and lose precision in bfloat16. This function keeps them in float32.
    """
    for module in model.modules():
        keep_scales = isinstance(module, (Int8Linear, Int8InputQuantizer))
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point() and not (keep_scales and "scale" in name):
                setattr(module, name, buffer.to(dtype))
    return model
