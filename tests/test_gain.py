"""The fp-gain control: gains at SASQ's quantizer places, exact at 1, analytic gradients, trained as sasq is."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from sasq.gain import ActivationGain, GainLinear, attach_gains
from sasq.method import Scheme, build_quantized_model, get_method
from sasq.train import TrainConfig, frozen_digest, train_scales

from conftest import STORIES_DIR, record_batches, stories260k_float64


def fresh_stories(dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(STORIES_DIR, dtype=dtype).eval()


def float64_loss(model, ids):
    """Mean next-token cross-entropy computed in the logits' dtype (the HF loss casts to float32)."""
    logits = model(ids).logits[:, :-1, :]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def windows(count=4, length=32, seed=0):
    return torch.randint(3, 512, (count, length), generator=torch.Generator().manual_seed(seed))


def test_method_registered():
    method = get_method("fp-gain")
    assert method.activation == "none"
    assert method.gains
    assert method.trains
    assert method.observer is None


@pytest.mark.parametrize("quantize_lm_head", [False, True])
@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_gains_match_sasq_scales(stories_path, quantize_lm_head, granularity):
    scheme = Scheme(granularity=granularity, quantize_lm_head=quantize_lm_head)
    scales = build_quantized_model(fresh_stories(), get_method("sasq"), scheme, None, calibrate_scales=False)
    gains = build_quantized_model(fresh_stories(), get_method("fp-gain"), scheme, None)
    assert len(scales) == 20 + int(quantize_lm_head)
    assert list(gains) == list(scales)
    assert [g.raw_scale.shape for g in gains.values()] == [q.raw_scale.shape for q in scales.values()]


def test_gain_shared_like_quantizer(stories_path):
    model = fresh_stories()
    attach_gains(model)
    attention = model.model.layers[2].self_attn
    assert attention.q_proj.gain is attention.k_proj.gain is attention.v_proj.gain
    mlp = model.model.layers[2].mlp
    assert mlp.gate_proj.gain is mlp.up_proj.gain
    assert mlp.down_proj.gain is not mlp.up_proj.gain
    assert isinstance(attention.o_proj, GainLinear)


@pytest.mark.parametrize("quantize_lm_head", [False, True])
def test_unit_gains_give_fp_logits_exactly(stories_path, quantize_lm_head):
    ids = windows(2, 48)
    with torch.no_grad():
        reference = fresh_stories()(ids).logits
        model = fresh_stories()
        build_quantized_model(model, get_method("fp-gain"), Scheme(quantize_lm_head=quantize_lm_head), None)
        logits = model(ids).logits
    assert torch.equal(logits, reference)


@pytest.mark.parametrize("parametrization", ["log", "linear"])
def test_lm_head_gain_gradient_is_analytic(stories_path, parametrization):
    # With a gain g on the lm_head input, logits are g * z0 (lm_head has no bias), so
    # dL/dg = mean over predicted positions of sum_v (softmax(g z0)_v - onehot(target)_v) * z0_v,
    # and d/d(log g) = g * dL/dg.
    ids = windows(2, 40)
    with torch.no_grad():
        z0 = stories260k_float64()(ids).logits[:, :-1, :].reshape(-1, 512)
    targets = ids[:, 1:].reshape(-1)
    model = stories260k_float64()
    gains = attach_gains(model, parametrization=parametrization, include_lm_head=True)
    gains = {name: gain.double() for name, gain in gains.items()}
    g = 1.3
    gains["lm_head"].set_scale(torch.tensor(g, dtype=torch.float64))
    model.requires_grad_(False)
    gains["lm_head"].raw_scale.requires_grad_(True)
    float64_loss(model, ids).backward()

    probabilities = F.softmax(g * z0, dim=-1)
    onehot = F.one_hot(targets, 512).double()
    d_gain = ((probabilities - onehot) * z0).sum(dim=-1).mean()
    expected = g * d_gain if parametrization == "log" else d_gain
    torch.testing.assert_close(gains["lm_head"].raw_scale.grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("parametrization", ["log", "linear"])
@pytest.mark.parametrize("name", ["layers.0.qkv", "layers.3.down"])
def test_decoder_gain_gradient_matches_central_difference(stories_path, float64_rmsnorm, parametrization, name):
    ids = windows(1, 40, seed=1)
    model = stories260k_float64()
    gains = attach_gains(model, parametrization=parametrization)
    for index, gain in enumerate(gains.values()):
        gain.double()
        gain.set_scale(torch.tensor(1.0 + 0.05 * ((index % 5) - 2), dtype=torch.float64))
    gain = gains[name]
    gain.raw_scale.requires_grad_(True)
    float64_loss(model, ids).backward()
    analytic = float(gain.raw_scale.grad)

    step = 1e-6
    losses = []
    with torch.no_grad():
        start = gain.raw_scale.detach().clone()
        for sign in (1, -1):
            gain.raw_scale.copy_(start + sign * step)
            losses.append(float(float64_loss(model, ids)))
        gain.raw_scale.copy_(start)
    numeric = (losses[0] - losses[1]) / (2 * step)
    assert abs(analytic) > 1e-4
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_training_changes_only_gains(stories_path):
    model = fresh_stories()
    reference = {name: tensor.clone() for name, tensor in fresh_stories().state_dict().items()}
    gains = build_quantized_model(model, get_method("fp-gain"), Scheme(), None)
    trainable = {id(gain.raw_scale) for gain in gains.values()}
    before = frozen_digest(model, trainable)
    result = train_scales(model, gains, windows(4, 64), TrainConfig(lr=5e-2, batch_size=2, epochs=2))

    assert result.steps == 4
    assert frozen_digest(model, trainable) == before
    state = model.state_dict()
    for name, tensor in reference.items():
        wrapped = name.replace(".weight", ".linear.weight") if "_proj" in name else name
        assert torch.equal(state[wrapped], tensor), name
    assert all(not torch.equal(gain.raw_scale, torch.zeros(())) for gain in gains.values())
    assert not any(p.requires_grad for p in model.parameters())


def test_control_trains_on_sasq_batches(stories_path):
    ids = windows(6, 32, seed=2)
    config = TrainConfig(lr=1e-2, batch_size=2, epochs=2, seed=7)
    seen = {}
    for name in ("sasq", "fp-gain"):
        model = fresh_stories()
        scales = build_quantized_model(model, get_method(name), Scheme(), ids[:2])
        batches = record_batches(model)
        train_scales(model, scales, ids, config)
        seen[name] = batches
    assert len(seen["sasq"]) == 6
    assert all(torch.equal(a, b) for a, b in zip(seen["sasq"], seen["fp-gain"], strict=True))


def test_gain_rejects_nonzero_zero_point():
    gain = ActivationGain("layers.0.o", 4)
    with pytest.raises(ValueError, match="non-zero zero point"):
        gain.set_scale(torch.tensor(2.0), torch.tensor(3.0))


def test_gain_granularity_must_be_static_shape():
    with pytest.raises(ValueError, match="gain granularity 'per-token' is invalid"):
        ActivationGain("layers.0.o", 4, granularity="per-token")


def test_gains_reject_lsq_gradient_scale(tiny):
    with pytest.raises(ValueError, match="drop --lsq-grad-scale"):
        build_quantized_model(tiny, get_method("fp-gain"), Scheme(lsq_grad_scale=True), None)
