"""GPTQ: lower layer-output error than RTN on the same weights, values on RTN's grid, model-wide sequential run."""

from __future__ import annotations

import pytest
import torch

from sasq.gptq import HessianAccumulator, gptq_quantize_model, gptq_quantize_weight
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.patch import decoder_layers, iter_qlinears
from sasq.quantizer import fake_quantize_weight, weight_qparams
from sasq.spec import Granularity, QuantSpec

from conftest import relative_max_error, tiny_gqa_llama

PER_CHANNEL_4BIT = QuantSpec(bits=4, granularity=Granularity.PER_CHANNEL)
PER_GROUP_4BIT = QuantSpec(bits=4, granularity=Granularity.PER_GROUP, group_size=32)


def correlated_layer(seed: int = 0, in_features: int = 128, out_features: int = 64, tokens: int = 1024):
    """A random weight and inputs with correlated channels of very different magnitudes, like LLM activations."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator, dtype=torch.float64)
    mixing = torch.randn(in_features, in_features, generator=generator, dtype=torch.float64) / in_features**0.5
    magnitudes = torch.logspace(-1, 1, in_features, dtype=torch.float64)[torch.randperm(in_features, generator=generator)]
    inputs = torch.randn(tokens, in_features, generator=generator, dtype=torch.float64) @ mixing * magnitudes
    return weight, inputs


def hessian_of(inputs: torch.Tensor) -> torch.Tensor:
    accumulator = HessianAccumulator(inputs.shape[-1], torch.float64, inputs.device)
    for chunk in inputs.split(100):
        accumulator.add(chunk)
    return accumulator.hessian


def output_error(weight, quantized, inputs) -> float:
    return float(((inputs @ (weight - quantized).T) ** 2).sum())


def test_hessian_is_two_x_xt_over_tokens():
    _, inputs = correlated_layer()
    expected = 2 * inputs.T @ inputs / inputs.shape[0]
    assert torch.allclose(hessian_of(inputs), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", [PER_CHANNEL_4BIT, PER_GROUP_4BIT], ids=["per-channel", "per-group"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_output_error(spec, act_order):
    weight, inputs = correlated_layer()
    gptq = gptq_quantize_weight(weight, hessian_of(inputs), spec, block_size=32, act_order=act_order)
    rtn = fake_quantize_weight(weight, spec)
    assert output_error(weight, gptq, inputs) < 0.8 * output_error(weight, rtn, inputs)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_values_on_rtn_grid(act_order):
    weight, inputs = correlated_layer()
    gptq = gptq_quantize_weight(weight, hessian_of(inputs), PER_CHANNEL_4BIT, act_order=act_order)
    scale, _ = weight_qparams(weight, PER_CHANNEL_4BIT)
    levels = gptq / scale
    assert torch.allclose(levels, levels.round(), atol=1e-9, rtol=0)
    assert levels.round().min() >= PER_CHANNEL_4BIT.qmin
    assert levels.round().max() <= PER_CHANNEL_4BIT.qmax


def test_dead_input_column_zeroed():
    weight, inputs = correlated_layer()
    inputs[:, 7] = 0.0
    gptq = gptq_quantize_weight(weight, hessian_of(inputs), PER_CHANNEL_4BIT)
    assert torch.equal(gptq[:, 7], torch.zeros_like(gptq[:, 7]))


def test_model_sets_quantized_weight_on_every_decoder_linear():
    model = tiny_gqa_llama()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    errors = gptq_quantize_model(model, ids, PER_CHANNEL_4BIT)
    assert len(errors) == 7 * len(decoder_layers(model))
    for layer in decoder_layers(model):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            linear = layer.get_submodule(name)
            assert torch.equal(linear.quantized_weight, linear.weight), name


def test_patched_model_keeps_gptq_weights():
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    reference = tiny_gqa_llama().float()
    gptq_quantize_model(reference, ids, PER_CHANNEL_4BIT)
    model = tiny_gqa_llama().float()
    build_quantized_model(model, get_method("dynamic"), Scheme(wbits=4, abits=8, weight_quantizer="gptq"), ids)
    qlinears = dict(iter_qlinears(model))
    assert len(qlinears) == 7 * len(decoder_layers(model))
    for name, qlinear in qlinears.items():
        assert torch.equal(qlinear.weight, reference.get_submodule(name).quantized_weight), name


def test_gptq_lowers_model_error_against_rtn():
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(0))
    reference = tiny_gqa_llama()
    with torch.no_grad():
        expected = reference(ids).logits
    errors = {}
    for weight_quantizer in ("rtn", "gptq"):
        model = tiny_gqa_llama()
        build_quantized_model(model, get_method("dynamic"), Scheme(wbits=3, abits=8, weight_quantizer=weight_quantizer), ids)
        with torch.no_grad():
            errors[weight_quantizer] = float(((model(ids).logits - expected) ** 2).mean())
    assert errors["gptq"] < errors["rtn"]


def test_gptq_on_rotated_model_uses_transformed_input():
    model = tiny_gqa_llama().float()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    build_quantized_model(model, get_method("quarot-dynamic"), Scheme(wbits=8, abits=8, weight_quantizer="gptq"), ids)
    with torch.no_grad():
        logits = model(ids).logits
    assert relative_max_error(logits, reference) < 0.05


def test_scheme_rejects_unknown_weight_quantizer():
    with pytest.raises(ValueError, match="weight_quantizer 'awq'"):
        Scheme(weight_quantizer="awq")


def test_gptq_needs_calibration_windows():
    with pytest.raises(ValueError, match="needs calibration windows"):
        build_quantized_model(tiny_gqa_llama(), get_method("dynamic"), Scheme(weight_quantizer="gptq"), None)
