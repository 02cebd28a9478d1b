import torch
from torch import nn

from sasq.qlinear import QLinear
from sasq.quantizer import ActivationQuantizer, fake_quantize, fake_quantize_weight
from sasq.spec import QuantSpec

WSPEC = QuantSpec(bits=8, granularity="per-channel")


def make_linear(seed=0, n_in=6, n_out=5):
    torch.manual_seed(seed)
    linear = nn.Linear(n_in, n_out, bias=False).double()
    linear.requires_grad_(False)
    return linear


def test_per_tensor_path_is_qw_times_qx():
    linear = make_linear()
    quantizer = ActivationQuantizer(QuantSpec(bits=8), "q", 6).double()
    quantizer.set_scale(torch.tensor(0.01))
    layer = QLinear(linear, WSPEC, quantizer)
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = fake_quantize(x, torch.tensor(0.01, dtype=torch.float64), 0.0, -128, 127) @ fake_quantize_weight(linear.weight, WSPEC).T
    torch.testing.assert_close(layer(x), expected)


def test_per_channel_scales_fold_into_weight():
    linear = make_linear()
    quantizer = ActivationQuantizer(QuantSpec(bits=8, granularity="per-channel"), "q", 6, parametrization="linear").double()
    s = torch.linspace(0.01, 0.06, 6, dtype=torch.float64)
    quantizer.set_scale(s)
    layer = QLinear(linear, WSPEC, quantizer)
    x = torch.randn(3, 6, dtype=torch.float64)
    x_int = torch.clamp(torch.round(x / s), -128, 127)
    expected = x_int @ fake_quantize_weight(linear.weight * s, WSPEC).T
    torch.testing.assert_close(layer(x), expected)
    # The weight keeps the float values; its quantized form depends on s, so s gets gradients through it.
    assert torch.equal(layer.weight, linear.weight)
    layer(x).sum().backward()
    assert quantizer.raw_scale.grad is not None
    assert torch.all(quantizer.raw_scale.grad != 0)


def test_folded_cache_follows_scale_updates():
    linear = make_linear()
    quantizer = ActivationQuantizer(QuantSpec(bits=8, granularity="per-channel"), "q", 6).double()
    quantizer.set_scale(torch.full((6,), 0.02))
    layer = QLinear(linear, WSPEC, quantizer)
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        first = layer(x)
        quantizer.set_scale(torch.full((6,), 0.04))
        second = layer(x)
    assert not torch.equal(first, second)


def test_disabled_quantizer_leaves_input_float():
    linear = make_linear()
    quantizer = ActivationQuantizer(QuantSpec(bits=8), "q", 6).double()
    quantizer.set_scale(torch.tensor(0.5))
    quantizer.enabled = False
    layer = QLinear(linear, WSPEC, quantizer)
    x = torch.randn(2, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ fake_quantize_weight(linear.weight, WSPEC).T)
