import pytest
import torch

from sasq.method import Scheme, build_quantized_model, get_method
from sasq.train import TrainConfig, frozen_digest, train_scales

from conftest import record_batches, tiny_llama


def prepared(seed=0, granularity="per-tensor"):
    model = tiny_llama(seed=seed)
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(seed))
    quantizers = build_quantized_model(model, get_method("sasq"), Scheme(wbits=4, abits=4, granularity=granularity), ids[:4])
    return model, quantizers, ids


def scales_of(quantizers):
    return {name: q.raw_scale.detach().clone() for name, q in quantizers.items()}


@pytest.mark.parametrize("granularity", ["per-tensor", "per-channel"])
def test_only_scales_change(granularity):
    model, quantizers, ids = prepared(granularity=granularity)
    before_scales = scales_of(quantizers)
    trainable = {id(q.raw_scale) for q in quantizers.values()}
    before = frozen_digest(model, trainable)
    result = train_scales(model, quantizers, ids, TrainConfig(lr=1e-2, batch_size=2, epochs=2))
    assert frozen_digest(model, trainable) == before
    assert result.steps == 8
    assert len(result.loss_curve) == 8
    changed = [not torch.equal(before_scales[n], q.raw_scale) for n, q in quantizers.items()]
    assert all(changed)
    assert not any(p.requires_grad for p in model.parameters())


def test_training_recovers_from_overclipping():
    model, quantizers, ids = prepared()
    batch = ids[:4]
    with torch.no_grad():
        for quantizer in quantizers.values():
            quantizer.set_scale(quantizer.scale() * 0.2)
        start = float(model(batch, labels=batch).loss)
    train_scales(model, quantizers, batch, TrainConfig(lr=3e-2, batch_size=4, epochs=30))
    with torch.no_grad():
        end = float(model(batch, labels=batch).loss)
    assert end < start


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    config = TrainConfig(lr=1e-2, batch_size=2, epochs=2, checkpoint_every=3)
    model, quantizers, ids = prepared()
    reference = train_scales(model, quantizers, ids, config)
    expected = scales_of(quantizers)

    model, quantizers, ids = prepared()
    checkpoint = tmp_path / "run.ckpt"
    calls = {"n": 0}
    original = model.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    model.forward = failing_forward
    with pytest.raises(KeyboardInterrupt):
        train_scales(model, quantizers, ids, config, checkpoint_path=checkpoint)
    assert checkpoint.exists()

    model, quantizers, ids = prepared()
    resumed = train_scales(model, quantizers, ids, config, checkpoint_path=checkpoint)
    assert resumed.resumed_from == 3
    assert resumed.loss_curve == reference.loss_curve
    for name, value in scales_of(quantizers).items():
        assert torch.equal(value, expected[name])
    assert not checkpoint.exists()


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    model, quantizers, ids = prepared()
    checkpoint = tmp_path / "run.ckpt"
    config = TrainConfig(lr=1e-2, checkpoint_every=2, max_steps=3)
    original = model.forward
    calls = {"n": 0}

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.forward = failing_forward
    with pytest.raises(KeyboardInterrupt):
        train_scales(model, quantizers, ids, config, checkpoint_path=checkpoint)
    model, quantizers, ids = prepared()
    with pytest.raises(ValueError, match="made with other settings"):
        train_scales(model, quantizers, ids, TrainConfig(lr=2e-2, checkpoint_every=2, max_steps=3), checkpoint_path=checkpoint)


def test_dynamic_method_has_nothing_to_train():
    model = tiny_llama()
    quantizers = build_quantized_model(model, get_method("dynamic"), Scheme(), None)
    with pytest.raises(ValueError, match="no static activation scales"):
        train_scales(model, quantizers, torch.zeros(1, 8, dtype=torch.long), TrainConfig())


def test_seed_sets_window_order():
    orders = {}
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        model, quantizers, ids = prepared()
        batches = record_batches(model)
        train_scales(model, quantizers, ids, TrainConfig(lr=1e-2, batch_size=2, epochs=2, seed=seed))
        orders[run] = torch.stack(batches)
    assert torch.equal(orders["a"], orders["b"])
    assert not torch.equal(orders["a"], orders["c"])
    for order in orders.values():
        first_epoch, second_epoch = order[:4].reshape(8, -1), order[4:].reshape(8, -1)
        assert sorted(map(tuple, first_epoch.tolist())) == sorted(map(tuple, ids.tolist()))
        assert sorted(map(tuple, second_epoch.tolist())) == sorted(map(tuple, ids.tolist()))
        assert not torch.equal(first_epoch, second_epoch)
