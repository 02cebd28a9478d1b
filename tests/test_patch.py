import torch

from sasq.method import Scheme, build_quantized_model, get_method
from sasq.patch import find_quantizers, iter_qlinears, patch_model
from sasq.qlinear import QLinear
from sasq.spec import QuantConfig

from conftest import tiny_llama


def test_every_decoder_linear_wrapped(stories):
    model = stories.model
    quantizers = patch_model(model, QuantConfig())
    layers = model.config.num_hidden_layers
    assert len(list(iter_qlinears(model))) == 7 * layers
    assert len(quantizers) == 4 * layers
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.input_quantizer is attn.k_proj.input_quantizer is attn.v_proj.input_quantizer
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.input_quantizer is mlp.up_proj.input_quantizer
    assert mlp.down_proj.input_quantizer is not mlp.up_proj.input_quantizer
    assert list(find_quantizers(model)) == list(quantizers)


def test_lm_head_and_tied_embedding_stay_float(stories):
    model = stories.model
    embedding = model.model.embed_tokens.weight.detach().clone()
    patch_model(model, QuantConfig())
    assert not isinstance(model.lm_head, QLinear)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, embedding)


def test_quantized_lm_head_unties_copy(tiny):
    embedding = tiny.model.embed_tokens.weight.detach().clone()
    quantizers = patch_model(tiny, QuantConfig(quantize_lm_head=True))
    assert isinstance(tiny.lm_head, QLinear)
    assert "lm_head" in quantizers
    assert torch.equal(tiny.model.embed_tokens.weight, embedding)


def test_gqa_model_runs_quantized():
    model = tiny_llama(heads=4, kv_heads=1)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = model(ids).logits
    quantizers = build_quantized_model(model, get_method("static-minmax"), Scheme(), ids)
    assert all(q.initialized for q in quantizers.values())
    logits = model(ids).logits
    assert logits.shape == reference.shape
    assert torch.isfinite(logits).all()
    # 8-bit weights and activations move a random model's logits only a little.
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_patching_twice_is_refused(tiny):
    patch_model(tiny, QuantConfig())
    try:
        patch_model(tiny, QuantConfig())
    except RuntimeError as err:
        assert "already patched" in str(err)
    else:
        raise AssertionError("second patch did not raise")
