import pytest
import torch

from sasq.observers import make_observer
from sasq.spec import QuantSpec

SAMPLES = torch.tensor(
    [
        [[1.0, -2.0], [0.5, 0.0]],
        [[4.0, 0.0], [-1.0, 3.0]],
    ]
)  # [samples, tokens, channels]


def test_minmax_global_absmax():
    obs = make_observer("minmax", QuantSpec(bits=8))
    obs.update(SAMPLES[:1])
    obs.update(SAMPLES[1:])
    scale, zero_point = obs.compute()
    torch.testing.assert_close(scale, torch.tensor(4.0 / 127))
    assert float(zero_point) == 0.0


def test_mean_max_averages_samples():
    obs = make_observer("mean-max", QuantSpec(bits=8))
    obs.update(SAMPLES)
    torch.testing.assert_close(obs.compute()[0], torch.tensor((2.0 + 4.0) / 2 / 127))


def test_mean_max_per_channel():
    obs = make_observer("mean-max", QuantSpec(bits=8, granularity="per-channel"))
    obs.update(SAMPLES)
    torch.testing.assert_close(obs.compute()[0], torch.tensor([(1.0 + 4.0) / 2, (2.0 + 3.0) / 2]) / 127)


def test_percentile_nearest_rank():
    x = torch.arange(1, 101, dtype=torch.float32).reshape(1, 100, 1)
    obs = make_observer("percentile", QuantSpec(bits=8), percentile=90.0)
    obs.update(x)
    torch.testing.assert_close(obs.compute()[0], torch.tensor(90.0 / 127))


def test_asymmetric_minmax_range():
    obs = make_observer("minmax", QuantSpec(bits=8, symmetric=False))
    obs.update(torch.tensor([[[0.5, 2.55]]]))
    scale, zero_point = obs.compute()
    # The range widens to include zero: [0, 2.55] -> scale 0.01, zero point 0.
    torch.testing.assert_close(scale, torch.tensor(0.01))
    assert float(zero_point) == 0.0


def test_empty_observer_raises():
    with pytest.raises(RuntimeError, match="saw no samples"):
        make_observer("minmax", QuantSpec()).compute()


def test_unknown_observer():
    with pytest.raises(ValueError, match="observer 'kl' is unknown"):
        make_observer("kl", QuantSpec())
