import math

import pytest
import torch

from sasq.quantizer import ActivationQuantizer, dynamic_qparams, fake_quantize, fake_quantize_weight, weight_qparams
from sasq.spec import QuantSpec


def test_fake_quantize_exact_values():
    x = torch.tensor([0.26, -0.04, 0.05, 1.0, -1.0], dtype=torch.float64)
    out = fake_quantize(x, torch.tensor(0.1, dtype=torch.float64), 0.0, -8, 7)
    # 0.05/0.1 = 0.5 rounds to even (0); 1.0 clips to 0.7 and -1.0 to -0.8.
    torch.testing.assert_close(out, torch.tensor([0.3, -0.0, 0.0, 0.7, -0.8], dtype=torch.float64))


def test_ste_gradients_match_lsq_formula():
    x = torch.tensor([0.26, -0.13, 2.0, -2.0, 0.44], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    fake_quantize(x, s, 0.0, -8, 7).sum().backward()
    v = x.detach() / 0.1
    inside = (v >= -8) & (v <= 7)
    expected_s = torch.where(inside, torch.round(v) - v, torch.where(v > 7, torch.tensor(7.0, dtype=torch.float64), torch.tensor(-8.0, dtype=torch.float64)))
    assert torch.allclose(s.grad, expected_s.sum())
    assert torch.equal(x.grad, inside.to(torch.float64))


def test_asymmetric_zero_point_gradient():
    x = torch.tensor([0.5, 3.0, -1.0], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(0.01, dtype=torch.float64, requires_grad=True)
    z = torch.tensor(10.0, dtype=torch.float64)
    out = fake_quantize(x, s, z, 0, 255)
    out.sum().backward()
    # 0.5 -> 60 inside; 3.0 -> 310 clips to 255; -1.0 -> -90 clips to 0.
    torch.testing.assert_close(out.detach(), torch.tensor([0.5, 2.45, -0.1], dtype=torch.float64))
    assert torch.allclose(s.grad, torch.tensor(0.0 + (255 - 10) + (0 - 10), dtype=torch.float64))


def test_lsq_grad_scale_multiplies_gradient():
    spec = QuantSpec(bits=8)
    x = torch.randn(4, 16, dtype=torch.float64)
    grads = []
    for lsq in (False, True):
        q = ActivationQuantizer(spec, "q", 16, parametrization="linear", lsq_grad_scale=lsq).double()
        q.set_scale(torch.tensor(0.01))
        q(x).sum().backward()
        grads.append(q.raw_scale.grad)
    assert torch.allclose(grads[1], grads[0] / math.sqrt(16 * 127))


@pytest.mark.parametrize("parametrization", ["log", "linear"])
def test_scale_stays_positive_and_finite(parametrization):
    q = ActivationQuantizer(QuantSpec(bits=8), "q", 8, parametrization=parametrization)
    q.set_scale(torch.tensor(0.5))
    for bad in (-3.0, 1e30, -1e30):
        with torch.no_grad():
            q.raw_scale.fill_(bad)
        value = q.scale()
        assert torch.isfinite(value)
        assert value > 0
        q.project_()
        assert torch.isfinite(q.raw_scale)


def test_log_parametrization_gradient_is_chain_rule():
    x = torch.randn(3, 8, dtype=torch.float64)
    lin = ActivationQuantizer(QuantSpec(bits=8), "a", 8, parametrization="linear").double()
    log = ActivationQuantizer(QuantSpec(bits=8), "b", 8, parametrization="log").double()
    for q in (lin, log):
        q.set_scale(torch.tensor(0.02))
        q(x).sum().backward()
    assert torch.allclose(log.raw_scale.grad, lin.raw_scale.grad * 0.02)


def test_uncalibrated_static_quantizer_raises():
    q = ActivationQuantizer(QuantSpec(bits=8), "layers.0.qkv", 8)
    with pytest.raises(RuntimeError, match="layers.0.qkv has no scale yet"):
        q(torch.ones(2, 8))


def test_dynamic_per_token_scale():
    spec = QuantSpec(bits=8, granularity="per-token", dynamic=True)
    x = torch.tensor([[3.0, -254.0], [0.5, 0.25]])
    scale, zero_point = dynamic_qparams(x, spec)
    torch.testing.assert_close(scale, torch.tensor([[2.0], [0.5 / 127]]))
    assert torch.equal(zero_point, torch.zeros(2, 1))
    out = ActivationQuantizer(spec, "d", 2)(x)
    torch.testing.assert_close(out, torch.tensor([[4.0, -254.0], [0.5, 0.5 / 127 * 64]]))  # 1.5 rounds to 2


def test_weight_rtn_per_channel_and_group():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.1], [10.0, 2.0, -3.0, 0.0]])
    scale, _ = weight_qparams(w, QuantSpec(bits=4, granularity="per-channel"))
    torch.testing.assert_close(scale, torch.tensor([[1.0 / 7], [10.0 / 7]]))
    grouped = QuantSpec(bits=4, granularity="per-group", group_size=2)
    gscale, _ = weight_qparams(w, grouped)
    assert gscale.shape == (2, 2, 1)
    q = fake_quantize_weight(w, grouped)
    assert q.shape == w.shape
    # Re-quantizing a quantized weight is the identity: the abs-max lands on the grid exactly.
    torch.testing.assert_close(fake_quantize_weight(q, grouped), q)
