"""Orthogonal rotations of any size for QuaRot: Hadamard where one is constructible, else a seeded fallback.

A :class:`Rotation` of size ``n`` computes ``x -> x @ R`` on the last dimension, with

    R = diag(signs) (A ⊗ S_p),    n = m * p,    p a power of two,

where ``S_p`` is the normalised Sylvester Hadamard matrix (applied by a fast Walsh-Hadamard
transform in ``p log p`` operations, never as a dense matrix), ``A`` is a small dense ``m x m``
orthogonal block and ``signs`` is an optional random ``±1`` vector (QuaRot's "random Hadamard").
``R`` is orthogonal because ``diag(signs)``, ``A`` and ``S_p`` are, and the Kronecker product of
orthogonal matrices is orthogonal: ``(A ⊗ S)(A ⊗ S)ᵀ = AAᵀ ⊗ SSᵀ = I``.

Which block each size gets (:func:`plan_rotation` chooses the smallest ``m = o * 2**j``, with
``o`` the odd part of ``n``, for which a Hadamard matrix of order ``m`` is constructible here):

* ``m = 1``: ``n`` is a power of two (64, 4096, 8192): pure fast Walsh-Hadamard transform.
* Paley construction I (order ``q + 1`` for a prime power ``q ≡ 3 mod 4``) or II (order
  ``2(q + 1)`` for ``q ≡ 1 mod 4``) from the quadratic character of GF(q), scaled by
  ``1 / sqrt(m)``: 576 = 36 (Paley II, q = 17) x 16, 1536 = 12 (Paley I, q = 11) x 128,
  5120 = 20 (Paley I, q = 19) x 256, 11008 = 344 (Paley I, q = 7³) x 32,
  13824 = 108 (Paley I, q = 107) x 128, 14336 = 28 (Paley I, q = 3³) x 512,
  28672 = 28 x 1024. These ``A`` are true Hadamard matrices (entries ``±1/sqrt(m)``), so ``R``
  is a Hadamard matrix of order ``n`` up to the sign diagonal.
* Fallback, when no ``m`` works (172 = 4 x 43: Hadamard matrices of order 172 exist but come from
  Williamson's construction, not implemented here): ``A`` is a seeded random orthogonal matrix of
  the odd part ``o`` (43), from the QR decomposition of a Gaussian matrix with the signs of
  ``diag(R)`` moved into ``Q`` (Haar-distributed, Mezzadri 2007); it is orthogonal by the QR
  property ``QᵀQ = I``. Its entries are not all of magnitude ``1/sqrt(m)``, so it spreads
  outliers less evenly than a Hadamard block.

Blocks are capped at :data:`MAX_BLOCK` so that online rotations stay cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor, nn

MAX_BLOCK = 512


FWHT_FACTOR_BITS = 6


@lru_cache(maxsize=None)
def _sylvester_sign_matrix(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Build the unnormalised ``±1`` Sylvester matrix of a power-of-two ``size`` (exact in every dtype)."""
    matrix = torch.ones(1, 1, dtype=dtype, device=device)
    butterfly = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
    while matrix.shape[0] < size:
        matrix = torch.kron(butterfly, matrix)
    return matrix


def fwht(x: Tensor) -> Tensor:
    """Normalised fast Walsh-Hadamard transform over the last dimension (a power of two).

    Computes ``x @ S_p`` with ``S_p`` the Sylvester matrix ``S_{2k} = [[S_k, S_k], [S_k, -S_k]] / sqrt(2)``,
    which is symmetric and orthogonal. Because ``S_{ab} = S_a ⊗ S_b``, the input is viewed as an
    ``f_1 x ... x f_k`` grid with factors of at most ``2**FWHT_FACTOR_BITS`` and a small dense
    ``±1`` Sylvester matrix is applied along each axis: ``p * (f_1 + ... + f_k)`` operations (128 per
    element for p = 4096) in a few large matrix products, instead of ``log2(p)`` strided butterfly passes.
    """
    size = x.shape[-1]
    if size < 1 or size & (size - 1):
        raise ValueError(f"fwht needs a power-of-two last dimension, got {size}")
    bits = size.bit_length() - 1
    factors = []
    while bits > 0:
        step = min(FWHT_FACTOR_BITS, bits)
        factors.append(1 << step)
        bits -= step
    y = x.reshape(-1, size)
    rows = y.shape[0]
    after = size
    for factor in factors:
        after //= factor
        signs = _sylvester_sign_matrix(factor, x.dtype, x.device)
        if after == 1:
            y = y.reshape(-1, factor) @ signs
        else:
            y = torch.matmul(signs, y.reshape(-1, factor, after))
    return y.reshape(x.shape) / math.sqrt(size)


def _prime_power(q: int) -> tuple[int, int] | None:
    """``(p, k)`` with ``q = p**k`` and ``p`` prime, or ``None``."""
    if q < 2:
        return None
    for p in range(2, math.isqrt(q) + 1):
        if q % p == 0:
            k = 0
            while q % p == 0:
                q //= p
                k += 1
            return (p, k) if q == 1 else None
    return (q, 1)


def _irreducible_polynomial(p: int, degree: int) -> list[int]:
    """Coefficients ``c_0..c_{d-1}`` of a monic irreducible ``x^d + ...`` over GF(p), for ``d <= 3``.

    A polynomial of degree 2 or 3 is irreducible exactly when it has no root in GF(p).
    """
    if degree > 3:
        raise ValueError(f"GF(p^{degree}) is not supported; only prime powers with exponent up to 3")
    for index in range(p**degree):
        coefficients = [(index // p**i) % p for i in range(degree)]
        if coefficients[0] == 0:
            continue
        if all((x**degree + sum(c * x**i for i, c in enumerate(coefficients))) % p for x in range(p)):
            return coefficients
    raise AssertionError(f"no irreducible polynomial of degree {degree} over GF({p})")


def _quadratic_character_matrix(q: int) -> np.ndarray:
    """Jacobsthal matrix ``Q[a, b] = chi(a - b)`` of GF(q), ``chi`` the quadratic character."""
    p, k = _prime_power(q)
    digits = np.array([[(index // p**i) % p for i in range(k)] for index in range(q)], dtype=np.int64)
    if k == 1:
        squares = {(x * x) % p for x in range(1, p)}
    else:
        modulus = _irreducible_polynomial(p, k)
        squares = set()
        for element in digits[1:]:
            product = np.convolve(element, element) % p
            for degree in range(2 * k - 2, k - 1, -1):
                lead = product[degree]
                if lead:
                    product[degree - k : degree] = (product[degree - k : degree] - lead * np.array(modulus)) % p
                    product[degree] = 0
            squares.add(int(sum(int(c) * p**i for i, c in enumerate(product[:k]))))
    character = np.full(q, -1, dtype=np.int64)
    character[0] = 0
    character[sorted(squares)] = 1
    difference = (digits[:, None, :] - digits[None, :, :]) % p
    index = (difference * (p ** np.arange(k))).sum(-1)
    return character[index]


def paley_hadamard(order: int) -> np.ndarray | None:
    """Build a ``±1`` Hadamard matrix of ``order`` by Paley's construction I or II, or ``None`` if neither applies."""
    q = order - 1
    power = _prime_power(q)
    if power is not None and q % 4 == 3:
        jacobsthal = _quadratic_character_matrix(q)
        skew = np.zeros((order, order), dtype=np.int64)
        skew[0, 1:] = 1
        skew[1:, 0] = -1
        skew[1:, 1:] = jacobsthal
        return skew + np.eye(order, dtype=np.int64)
    if order % 2 == 0:
        q = order // 2 - 1
        power = _prime_power(q)
        if power is not None and q % 4 == 1:
            conference = np.zeros((q + 1, q + 1), dtype=np.int64)
            conference[0, 1:] = 1
            conference[1:, 0] = 1
            conference[1:, 1:] = _quadratic_character_matrix(q)
            zero_block = np.array([[1, -1], [-1, -1]])
            one_block = np.array([[1, 1], [1, -1]])
            return np.kron(conference == 0, zero_block) + np.kron(conference, one_block)
    return None


@dataclass(frozen=True)
class RotationPlan:
    """Kronecker factorisation ``size = block_size x pow2`` of a rotation, with the block construction ``paley``, ``random`` or ``none``."""

    size: int
    block_size: int
    pow2: int
    block_kind: str


@lru_cache(maxsize=None)
def plan_rotation(size: int) -> RotationPlan:
    """Choose the Kronecker factorisation of a rotation of ``size`` (see the module docstring)."""
    if size < 1:
        raise ValueError(f"rotation size must be positive, got {size}")
    twos = (size & -size).bit_length() - 1
    odd = size >> twos
    if odd == 1:
        return RotationPlan(size, 1, size, "none")
    for shift in range(twos + 1):
        block = odd << shift
        if block > MAX_BLOCK:
            break
        if paley_hadamard(block) is not None:
            return RotationPlan(size, block, size // block, "paley")
    return RotationPlan(size, odd, 1 << twos, "random")


def random_orthogonal(size: int, seed: int) -> Tensor:
    """Draw a seeded Haar-random orthogonal matrix in float64 (QR of a Gaussian matrix, sign-corrected)."""
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(size, size, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def orthogonal_block(plan: RotationPlan, seed: int) -> Tensor | None:
    """Build the dense factor ``A`` of a plan in float64, scaled to be orthogonal; ``None`` when ``m = 1``."""
    if plan.block_kind == "none":
        return None
    if plan.block_kind == "paley":
        return torch.from_numpy(paley_hadamard(plan.block_size)).double() / math.sqrt(plan.block_size)
    return random_orthogonal(plan.block_size, seed)


class Rotation(nn.Module):
    """``x -> x @ R`` over the last dimension, ``R = diag(signs) (A ⊗ S_p)`` orthogonal (see the module docstring).

    Args:
        size: the dimension ``n`` rotated.
        seed: seeds the random signs and, for fallback sizes, the random orthogonal block.
        random_signs: multiply by a random ``±1`` diagonal first (QuaRot's randomised Hadamard).

    The factors are kept in float64 outside the module's buffers, so ``model.to(dtype)`` does
    not round them. Each call casts them to the input's dtype and device.
    """

    def __init__(self, size: int, seed: int = 0, random_signs: bool = False) -> None:
        super().__init__()
        self.size = size
        self.plan = plan_rotation(size)
        self.block = orthogonal_block(self.plan, seed)
        signs = None
        if random_signs:
            generator = torch.Generator().manual_seed(seed + 1)
            signs = torch.randint(0, 2, (size,), generator=generator).double() * 2 - 1
        self.signs = signs
        self._cast: dict[tuple, tuple[Tensor | None, Tensor | None]] = {}

    def _factors(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        key = (x.device, x.dtype)
        if key not in self._cast:
            block = None if self.block is None else self.block.to(device=x.device, dtype=x.dtype)
            signs = None if self.signs is None else self.signs.to(device=x.device, dtype=x.dtype)
            self._cast[key] = (block, signs)
        return self._cast[key]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size:
            raise ValueError(f"rotation of size {self.size} got an input with last dimension {x.shape[-1]}")
        block, signs = self._factors(x)
        if signs is not None:
            x = x * signs
        y = fwht(x.reshape(-1, self.plan.block_size, self.plan.pow2))
        if block is not None:
            # Row-vector form: x @ (A ⊗ S) = Aᵀ X S for X the [m, p] reshape of x.
            y = block.T @ y
        return y.reshape(x.shape)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Materialise the dense ``n x n`` matrix ``R`` (for tests and small sizes only)."""
        return self(torch.eye(self.size, dtype=dtype))

    def extra_repr(self) -> str:
        return f"size={self.size}, block={self.plan.block_size} ({self.plan.block_kind}), pow2={self.plan.pow2}, signs={self.signs is not None}"


class HeadMixing(nn.Module):
    """Rotation across attention heads: ``x -> x @ (R_heads ⊗ I_head_dim)`` on ``[..., heads * head_dim]`` inputs."""

    def __init__(self, num_heads: int, head_dim: int, seed: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.rotation = Rotation(num_heads, seed=seed)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        heads = x.reshape(*shape[:-1], self.num_heads, self.head_dim).transpose(-1, -2)
        return self.rotation(heads).transpose(-1, -2).reshape(shape)
