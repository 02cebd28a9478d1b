"""Rotations of every hidden and intermediate size the suite targets are orthogonal.

A full ``R Rᵀ = I`` check costs ``n³`` and ``n²`` memory, too much for n = 28672 in a unit test,
so orthogonality is checked in parts that together imply it: ``R = diag(signs) (A ⊗ S_p)``
(fast transform equal to that product), ``A Aᵀ = I``, ``S_p S_pᵀ = I``, ``signs = ±1``; and the
dense ``R Rᵀ = I`` directly for sizes up to 2048. ``S_p S_pᵀ = I`` for p = 4096 and 8192 (the
pure power-of-two sizes) takes tens of seconds and is marked slow (``pytest -m slow``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from baselines.hadamard import HeadMixing, Rotation, fwht, paley_hadamard, plan_rotation

# size -> (block size m, power-of-two factor p, block construction)
EXPECTED_PLANS = {
    64: (1, 64, "none"),  # stories260K hidden
    172: (43, 4, "random"),  # stories260K intermediate
    576: (36, 16, "paley"),  # SmolLM2-135M hidden
    1536: (12, 128, "paley"),  # SmolLM2-135M intermediate
    4096: (1, 4096, "none"),  # LLaMA-2-7B hidden
    11008: (344, 32, "paley"),  # LLaMA-2-7B intermediate
    5120: (20, 256, "paley"),  # LLaMA-2-13B hidden
    13824: (108, 128, "paley"),  # LLaMA-2-13B intermediate
    8192: (1, 8192, "none"),  # LLaMA-2-70B hidden
    28672: (28, 1024, "paley"),  # LLaMA-2-70B intermediate
    14336: (28, 512, "paley"),  # LLaMA-3-8B / Mistral intermediate
}
SIZES = sorted(EXPECTED_PLANS)
EYE_TOLERANCE = 1e-12


def sylvester(p: int) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix built by Kronecker powers of [[1, 1], [1, -1]]."""
    matrix = np.ones((1, 1))
    while matrix.shape[0] < p:
        matrix = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), matrix)
    return torch.from_numpy(matrix) / math.sqrt(p)


@pytest.mark.parametrize("size", SIZES)
def test_plan_per_size(size):
    plan = plan_rotation(size)
    assert (plan.block_size, plan.pow2, plan.block_kind) == EXPECTED_PLANS[size]
    assert plan.block_size * plan.pow2 == size


@pytest.mark.parametrize("order", sorted({m for m, _, kind in EXPECTED_PLANS.values() if kind == "paley"}))
def test_paley_block_is_hadamard(order):
    matrix = paley_hadamard(order)
    assert matrix.shape == (order, order)
    assert set(np.unique(matrix)) == {-1, 1}
    np.testing.assert_array_equal(matrix @ matrix.T, order * np.eye(order, dtype=np.int64))


def test_paley_rejects_impossible_orders():
    assert paley_hadamard(172) is None
    assert paley_hadamard(43) is None


@pytest.mark.parametrize("size", SIZES)
def test_dense_block_orthogonal(size):
    rotation = Rotation(size, seed=0, random_signs=True)
    if rotation.block is None:
        assert rotation.plan.block_size == 1
        return
    block = rotation.block
    assert block.dtype == torch.float64
    eye = torch.eye(block.shape[0], dtype=torch.float64)
    assert torch.allclose(block @ block.T, eye, atol=EYE_TOLERANCE, rtol=0)


SLOW_POW2 = 4096
POW2_FACTORS = sorted({p for _, p, _ in EXPECTED_PLANS.values()})


@pytest.mark.parametrize("p", [pytest.param(p, marks=pytest.mark.slow) if p >= SLOW_POW2 else p for p in POW2_FACTORS])
def test_fwht_orthogonal(p):
    # S is symmetric, so S Sᵀ = S S, and fwht(fwht(e_i)) = S S e_i must be e_i for every basis vector.
    chunk = 256
    for start in range(0, p, chunk):
        rows = torch.zeros(min(chunk, p - start), p, dtype=torch.float64)
        index = torch.arange(rows.shape[0])
        rows[index, start + index] = 1.0
        assert torch.allclose(fwht(fwht(rows)), rows, atol=EYE_TOLERANCE, rtol=0)


@pytest.mark.parametrize("p", [p for p in POW2_FACTORS if p < SLOW_POW2])
def test_fwht_symmetric(p):
    transform = fwht(torch.eye(p, dtype=torch.float64))
    assert torch.equal(transform, transform.T)


@pytest.mark.parametrize("p", [1, 2, 4, 64, 512])
def test_fwht_matches_sylvester(p):
    assert torch.allclose(fwht(torch.eye(p, dtype=torch.float64)), sylvester(p), atol=1e-15, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_rotation_is_signed_kronecker(size):
    rotation = Rotation(size, seed=3, random_signs=True)
    signs = rotation.signs
    assert torch.equal(signs.abs(), torch.ones(size, dtype=torch.float64))
    plan = rotation.plan
    x = torch.randn(3, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grid = (x * signs).reshape(3, plan.block_size, plan.pow2)
    block = torch.eye(1, dtype=torch.float64) if rotation.block is None else rotation.block
    # Row-vector form of x @ (A ⊗ S): Aᵀ X S, with S applied by the fast transform checked above.
    expected = (block.T @ fwht(grid)).reshape(3, size)
    assert torch.allclose(rotation(x), expected, atol=1e-12, rtol=0)
    assert torch.allclose(rotation(x).norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("size", [s for s in SIZES if s <= 2048])
def test_dense_matrix_orthogonal(size):
    matrix = Rotation(size, seed=0, random_signs=True).matrix()
    eye = torch.eye(size, dtype=torch.float64)
    assert torch.allclose(matrix @ matrix.T, eye, atol=EYE_TOLERANCE, rtol=0)


def test_rotation_seeded():
    first = Rotation(172, seed=5, random_signs=True).matrix()
    second = Rotation(172, seed=5, random_signs=True).matrix()
    other = Rotation(172, seed=6, random_signs=True).matrix()
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_rotation_keeps_input_dtype():
    x = torch.randn(2, 576, dtype=torch.float32)
    assert Rotation(576).forward(x).dtype == torch.float32


def test_rotation_rejects_wrong_size():
    with pytest.raises(ValueError, match="last dimension 63"):
        Rotation(64)(torch.zeros(2, 63))


@pytest.mark.parametrize(("heads", "head_dim"), [(8, 8), (9, 64), (6, 8)])
def test_head_mixing_is_kronecker_with_identity(heads, head_dim):
    mixing = HeadMixing(heads, head_dim, seed=0)
    expected = torch.kron(mixing.rotation.matrix(), torch.eye(head_dim, dtype=torch.float64))
    x = torch.randn(4, heads * head_dim, dtype=torch.float64)
    assert torch.allclose(mixing(x), x @ expected, atol=1e-12, rtol=0)
