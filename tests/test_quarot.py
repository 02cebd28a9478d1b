"""QuaRot: the rotated float model computes the original function, and its methods run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from baselines.hadamard import HeadMixing, Rotation
from baselines.quarot import rotate_model
from sasq.cli import main
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.patch import decoder_layers
from sasq.qlinear import QLinear, TransformedLinear

from conftest import llama2_7b_one_layer, relative_max_error, stories260k_float64, tiny_gqa_llama

TOLERANCE = 1e-6


def _assert_rotation_invariant(model, ids):
    with torch.no_grad():
        reference = model(ids).logits
        rotate_model(model)
        rotated = model(ids).logits
    assert relative_max_error(rotated, reference) < TOLERANCE


def test_invariance_stories260k(float64_rmsnorm):
    model = stories260k_float64()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    _assert_rotation_invariant(model, ids)


@pytest.mark.parametrize("tied", [True, False])
def test_invariance_tiny_gqa(float64_rmsnorm, tied):
    model = tiny_gqa_llama(tied=tied)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    _assert_rotation_invariant(model, ids)


def test_invariance_llama2_7b_sizes(float64_rmsnorm):
    model = llama2_7b_one_layer()
    ids = torch.randint(0, 32, (1, 8), generator=torch.Generator().manual_seed(0))
    _assert_rotation_invariant(model, ids)


def test_tied_embedding_is_untied():
    model = tiny_gqa_llama(tied=True)
    embedding = model.model.embed_tokens.weight.detach().clone()
    rotate_model(model)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.config.tie_word_embeddings is False
    assert not torch.allclose(model.model.embed_tokens.weight, embedding)


def test_rotated_model_structure():
    model = tiny_gqa_llama()
    rotate_model(model)
    for layer in decoder_layers(model):
        assert torch.equal(layer.input_layernorm.weight, torch.ones_like(layer.input_layernorm.weight))
        assert torch.equal(layer.post_attention_layernorm.weight, torch.ones_like(layer.post_attention_layernorm.weight))
        down = layer.mlp.down_proj
        assert isinstance(down, TransformedLinear)
        assert isinstance(down.input_transform, Rotation)
        assert down.input_transform.size == model.config.intermediate_size
        assert isinstance(layer.self_attn.o_proj, TransformedLinear)
        assert isinstance(layer.self_attn.o_proj.input_transform, HeadMixing)
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))


def test_rotation_is_deterministic():
    first, second = tiny_gqa_llama(), tiny_gqa_llama()
    rotate_model(first)
    rotate_model(second)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_rotation_spreads_outlier_channel():
    model = tiny_gqa_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 5] *= 50.0
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    seen = {}
    hook = decoder_layers(model)[0].input_layernorm.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))

    def peak_to_rms() -> float:
        with torch.no_grad():
            model(ids)
        x = seen["x"]
        return float(x.abs().max() / x.pow(2).mean().sqrt())

    before = peak_to_rms()
    rotate_model(model)
    after = peak_to_rms()
    hook.remove()
    assert after < before / 2


@pytest.mark.parametrize("method", ["quarot-dynamic", "quarot-static"])
def test_quantized_rotated_model_close_to_float(method):
    model = tiny_gqa_llama().float()
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).logits
    build_quantized_model(model, get_method(method), Scheme(wbits=8, abits=8), ids)
    layer = decoder_layers(model)[0]
    assert isinstance(layer.mlp.down_proj, QLinear)
    assert isinstance(layer.mlp.down_proj.input_transform, Rotation)
    assert isinstance(layer.self_attn.o_proj.input_transform, HeadMixing)
    with torch.no_grad():
        logits = model(ids).logits
    assert relative_max_error(logits, reference) < 0.05


def test_methods_registered():
    dynamic, static, trained = get_method("quarot-dynamic"), get_method("quarot-static"), get_method("sasq-quarot")
    assert (dynamic.activation, dynamic.trains) == ("dynamic", False)
    assert (static.activation, static.observer, static.trains) == ("static", "minmax", False)
    assert (trained.activation, trained.observer, trained.trains) == ("static", "mean-max", True)
    assert dynamic.transform is static.transform is trained.transform


def test_sasq_quarot_train_then_evaluate(tmp_path, stories_path, wikitext_dir, monkeypatch):
    monkeypatch.setenv("SASQ_WIKITEXT_DIR", str(wikitext_dir))
    model = ["--model", str(stories_path), "--method", "sasq-quarot", "--calib-windows", "2", "--calib-seqlen", "128"]
    scales = tmp_path / "sasq-quarot.safetensors"
    train = ["train", *model, "--train-windows", "3", "--train-seqlen", "128", "--checkpoint-every", "0", "--output", str(scales)]
    assert main(train) == 0
    assert json.loads(scales.with_suffix(".json").read_text())["steps"] == 3
    result = tmp_path / "eval.json"
    assert main(["evaluate", *model, "--seqlen", "256", "--eval-windows", "2", "--scales", str(scales), "--output", str(result)]) == 0
    row = json.loads(result.read_text())
    assert row["method"] == "sasq-quarot"
    assert 1.0 < row["ppl"] < 1000.0
