import pytest

from sasq.spec import Granularity, QuantConfig, QuantSpec


@pytest.mark.parametrize("bits", [0, 1, 9, 16])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=f"bits={bits} is out of range"):
        QuantSpec(bits=bits)


def test_grid_bounds():
    assert (QuantSpec(bits=8).qmin, QuantSpec(bits=8).qmax) == (-128, 127)
    assert (QuantSpec(bits=4).qmin, QuantSpec(bits=4).qmax) == (-8, 7)
    assert (QuantSpec(bits=8, symmetric=False).qmin, QuantSpec(bits=8, symmetric=False).qmax) == (0, 255)


def test_per_token_needs_dynamic():
    with pytest.raises(ValueError, match="per-token needs dynamic=True"):
        QuantSpec(granularity="per-token")


def test_string_granularity_normalized():
    assert QuantSpec(granularity="per-channel").granularity is Granularity.PER_CHANNEL


def test_unknown_granularity():
    with pytest.raises(ValueError, match="granularity 'per-row' is unknown"):
        QuantSpec(granularity="per-row")


def test_group_size_rules():
    with pytest.raises(ValueError, match="group_size=None is invalid"):
        QuantSpec(granularity="per-group")
    with pytest.raises(ValueError, match="only used with per-group"):
        QuantSpec(group_size=64)


def test_config_rejects_dynamic_weights():
    with pytest.raises(ValueError, match="weights are quantized once"):
        QuantConfig(weight=QuantSpec(granularity="per-token", dynamic=True))


def test_config_rejects_unknown_observer():
    with pytest.raises(ValueError, match="observer 'kl' is unknown"):
        QuantConfig(observer="kl")
