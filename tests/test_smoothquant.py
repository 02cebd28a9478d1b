"""SmoothQuant: smoothing factors follow the paper's formula and the smoothed float model is unchanged."""

from __future__ import annotations

import pytest
import torch

from baselines.smoothquant import DEFAULT_ALPHA, collect_activation_absmax, smooth_model
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.patch import decoder_layers

from conftest import llama2_7b_one_layer, relative_max_error, stories260k_float64, tiny_gqa_llama

TOLERANCE = 1e-6


def _assert_smoothing_invariant(model, ids):
    with torch.no_grad():
        reference = model(ids).logits
        smooth_model(model, collect_activation_absmax(model, ids))
        smoothed = model(ids).logits
    assert relative_max_error(smoothed, reference) < TOLERANCE


def test_invariance_stories260k(float64_rmsnorm):
    model = stories260k_float64()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    _assert_smoothing_invariant(model, ids)


@pytest.mark.parametrize("tied", [True, False])
def test_invariance_tiny_gqa(float64_rmsnorm, tied):
    model = tiny_gqa_llama(tied=tied)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    _assert_smoothing_invariant(model, ids)


def test_invariance_llama2_7b_sizes(float64_rmsnorm):
    model = llama2_7b_one_layer()
    ids = torch.randint(0, 32, (1, 8), generator=torch.Generator().manual_seed(0))
    _assert_smoothing_invariant(model, ids)


def test_factors_follow_formula():
    model = tiny_gqa_llama()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    absmax = collect_activation_absmax(model, ids)
    layer = decoder_layers(model)[1]
    norm_before = layer.post_attention_layernorm.weight.detach().clone()
    gate_before = layer.mlp.gate_proj.weight.detach().clone()
    up_before = layer.mlp.up_proj.weight.detach().clone()

    factors = smooth_model(model, absmax, alpha=0.7)

    weight_absmax = torch.cat([gate_before, up_before]).abs().amax(dim=0)
    expected = absmax["layers.1.gate_up"].pow(0.7) / weight_absmax.pow(0.3)
    assert torch.allclose(factors["layers.1.gate_up"], expected, rtol=1e-12, atol=0)
    assert torch.allclose(layer.post_attention_layernorm.weight, norm_before / expected, rtol=1e-12, atol=0)
    assert torch.allclose(layer.mlp.gate_proj.weight, gate_before * expected, rtol=1e-12, atol=0)
    assert torch.allclose(layer.mlp.up_proj.weight, up_before * expected, rtol=1e-12, atol=0)


def test_activation_absmax_is_per_channel_max():
    model = tiny_gqa_llama()
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    seen = []
    hook = decoder_layers(model)[0].self_attn.q_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    absmax = collect_activation_absmax(model, ids)
    hook.remove()
    expected = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).abs().amax(dim=0)
    assert torch.equal(absmax["layers.0.qkv"], expected)


def test_half_alpha_equalizes_maxima():
    # With alpha = 0.5, max|X_j / s_j| = max|W_j s_j| = sqrt(max|X_j| max|W_j|) for every channel.
    model = tiny_gqa_llama()
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    smooth_model(model, collect_activation_absmax(model, ids), alpha=0.5)
    after = collect_activation_absmax(model, ids)
    attention = decoder_layers(model)[0].self_attn
    weight_absmax = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]).abs().amax(dim=0)
    assert torch.allclose(after["layers.0.qkv"], weight_absmax, rtol=1e-9, atol=0)


def test_alpha_out_of_range():
    model = tiny_gqa_llama()
    with pytest.raises(ValueError, match="alpha=1.5"):
        smooth_model(model, {}, alpha=1.5)


@pytest.mark.parametrize("method", ["smoothquant-dynamic", "smoothquant-static"])
def test_quantized_smoothed_model_close_to_float(method):
    model = tiny_gqa_llama().float()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    build_quantized_model(model, get_method(method), Scheme(wbits=8, abits=8), ids)
    with torch.no_grad():
        logits = model(ids).logits
    assert relative_max_error(logits, reference) < 0.05


def test_methods_registered():
    dynamic, static, trained = get_method("smoothquant-dynamic"), get_method("smoothquant-static"), get_method("sasq-smoothquant")
    assert (dynamic.activation, dynamic.trains) == ("dynamic", False)
    assert (static.activation, static.observer, static.trains) == ("static", "minmax", False)
    assert (trained.activation, trained.observer, trained.trains) == ("static", "mean-max", True)
    assert dynamic.transform.keywords == {"alpha": DEFAULT_ALPHA}
    assert DEFAULT_ALPHA == 0.85
