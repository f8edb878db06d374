"""Initialisations of Kronecker factors from a dense weight (docs/inits.md).

Every function takes a weight W in `nn.Linear` layout (out, in) = (m1*m2, n1*n2),
the A dims (m1, n1) and the number of factors r, and returns `(A, B, s)` with
shapes (r, m1, n1), (r, m2, n2), (r,) such that W ~= sum_i s_i kron(A_i, B_i).
They are registered by name in `INITS` so configs can pick one.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import rearrange

from krony.config import INIT_METHODS
from krony.layers.base import check_factors, random_std
from krony.schemes import check_dims, check_init

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rearranged(W: torch.Tensor, a_dims: tuple[int, int]) -> torch.Tensor:
    """Van Loan's rearrangement: W (m1*m2, n1*n2) -> R (m1*n1, m2*n2), one row per block of W
    (flattened), so that sum_i kron(A_i, B_i) becomes sum_i vec(A_i) vec(B_i)^T."""
    m1, n1 = a_dims
    m2, n2 = check_dims(W.shape[0], W.shape[1], a_dims, "weight")
    return rearrange(W.detach(), "(m1 m2) (n1 n2) -> (m1 n1) (m2 n2)", m1=m1, m2=m2, n1=n1, n2=n2)


def top_singular(R: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-r singular triplets (U (m, r), S (r,), V (n, r)) of R, exactly, in float64.

    Only r are needed and one side of R is small for every scheme (at most 1152 for GPT-2
    small), so instead of a full SVD this takes the eigenvectors of the smaller Gram matrix
    (R^T R or R R^T, in float64) for its r largest eigenvalues and maps them through R. In
    float64 the singular vectors agree with `torch.linalg.svd`'s to about 1e-12 up to sign;
    the signs are fixed so that each column of V has a positive entry of largest magnitude.
    """
    import scipy.linalg

    R = R.detach().double()
    transpose = R.shape[0] < R.shape[1]
    if transpose:
        R = R.mT
    G = (R.mT @ R).cpu().numpy()  # (n, n), n = the smaller side
    n = G.shape[0]
    evals, evecs = scipy.linalg.eigh(G, subset_by_index=[n - r, n - 1], driver="evr")
    order = evals.argsort()[::-1].copy()  # largest first
    S = torch.from_numpy(evals[order].clip(min=0.0)).sqrt().to(R.device)  # (r,)
    V = torch.from_numpy(evecs[:, order].copy()).to(R.device)  # (n, r)
    sign = V.gather(0, V.abs().argmax(0, keepdim=True)).sign()
    V = V * torch.where(sign == 0, 1.0, sign)
    U = (R @ V) / torch.where(S > 0, S, 1.0)  # (m, r); a zero singular value gets U = 0 there
    return (V, S, U) if transpose else (U, S, V)


def vanloan(
    W: torch.Tensor,
    a_dims: tuple[int, int],
    factors: int = 1,
    normalize: bool = False,
    svd: str = "exact",
    niter: int = 10,
) -> Factors:
    """Van Loan: the Frobenius-optimal sum of r Kronecker products via an SVD of the rearranged W.

    W (m1*m2, n1*n2) is rearranged to R (m1*n1, m2*n2), whose rank-1 terms are
    vec(A_i) vec(B_i)^T; the top-r singular triplets give A_i = sqrt(s_i) u_i and
    B_i = sqrt(s_i) v_i. The error ||W - W_hat||_F equals the norm of the discarded
    singular values.

    Args:
        normalize: adaptive normalisation: scale so that ||W_hat||_F = ||W||_F; the factor
            is returned in `s` (a layer without learnable scalars folds it into A).
        svd: "exact": the top-r singular triplets in float64 (`top_singular`, deterministic);
            "lowrank": what the authors' code ran, `torch.svd_lowrank(R, q=r, niter=niter)` in
            float32, randomised through the global RNG.
        niter: subspace iterations of the "lowrank" SVD (the authors used 10).
    """
    factors = check_factors(factors)
    m1, n1 = a_dims
    m2, n2 = check_dims(W.shape[0], W.shape[1], a_dims, "weight")
    check_init("vanloan", a_dims, (m2, n2), factors)
    R = rearranged(W, a_dims)
    if svd == "exact":
        U, S, V = top_singular(R, factors)
    elif svd == "lowrank":
        U, S, V = (t.double() for t in torch.svd_lowrank(R.float(), q=factors, niter=niter))
    else:
        raise ValueError(f"unknown svd {svd!r}; valid choices: exact, lowrank")
    root = S.sqrt()
    A = rearrange(U * root, "(m1 n1) r -> r m1 n1", m1=m1, n1=n1)  # (r, m1, n1)
    B = rearrange(V * root, "(m2 n2) r -> r m2 n2", m2=m2, n2=n2)  # (r, m2, n2)
    s = torch.ones(factors, dtype=torch.float64, device=W.device)
    if normalize:
        approx = sum(torch.kron(a, b) for a, b in zip(A, B)).norm()  # ||sum_i kron(A_i, B_i)||_F
        if approx > 0:
            s = s * (W.detach().double().norm() / approx)
    return A.to(W.dtype), B.to(W.dtype), s.to(W.dtype)


def default_offsets(b_dims: tuple[int, int], factors: int) -> list[tuple[int, int]]:
    """The first r positions of B in row-major order: (0, 0), (0, 1), ..."""
    m2, n2 = b_dims
    return [divmod(k, n2) for k in range(factors)]


def prune(
    W: torch.Tensor,
    a_dims: tuple[int, int],
    factors: int = 1,
    offsets: Sequence[Sequence[int]] | None = None,
    fill: float = 0.0,
) -> Factors:
    """Pruning init: keep interleaved sub-matrices of W, one per factor.

    For B of shape (m2, n2) and offset (p, q): A = W[p::m2, q::n2] and B is 1 at (p, q)
    and `fill` elsewhere (the paper used 0 and 0.1). With fill = 0 the factor keeps exactly
    the entries W[i1*m2 + p, j1*n2 + q]; with r = m2*n2 distinct offsets it rebuilds W.

    Args:
        offsets: r distinct (p, q) with 0 <= p < m2, 0 <= q < n2; default the first r in
            row-major order, so r=1 keeps the even rows of a (2, 1) B ("B = [1, 0]^T").
        fill: value of the entries of B other than (p, q).
    """
    factors = check_factors(factors)
    m1, n1 = a_dims
    m2, n2 = check_dims(W.shape[0], W.shape[1], a_dims, "weight")
    check_init("prune", a_dims, (m2, n2), factors, {"offsets": offsets})
    offs = [tuple(int(v) for v in o) for o in offsets] if offsets is not None else default_offsets((m2, n2), factors)
    Wd = W.detach()
    A = torch.stack([Wd[p::m2, q::n2] for p, q in offs])  # (r, m1, n1)
    B = torch.full((factors, m2, n2), float(fill), dtype=W.dtype, device=W.device)
    for i, (p, q) in enumerate(offs):
        B[i, p, q] = 1.0
    return A.clone(), B, torch.ones(factors, dtype=W.dtype, device=W.device)


def random_factors(
    W: torch.Tensor,
    a_dims: tuple[int, int],
    factors: int = 1,
    std: float = 0.02,
    generator: torch.Generator | None = None,
) -> Factors:
    """Random normal factors; only W's shape, dtype and device are used.

    Each entry of A kron B is a product of two independent N(0, sigma^2) draws, whose std is
    sigma^2; summing r of them multiplies it by sqrt(r). sigma = sqrt(std / sqrt(r)) gives
    GPT-2's 0.02 for the full weight (the paper's "fair comparison").
    """
    factors = check_factors(factors)
    m1, n1 = a_dims
    m2, n2 = check_dims(W.shape[0], W.shape[1], a_dims, "weight")
    sigma = random_std(std, factors)
    kw = {"dtype": W.dtype, "device": W.device, "generator": generator}
    A = torch.randn(factors, m1, n1, **kw) * sigma
    B = torch.randn(factors, m2, n2, **kw) * sigma
    return A, B, torch.ones(factors, dtype=W.dtype, device=W.device)


InitFn = Callable[..., Factors]

INITS: dict[str, InitFn] = dict(zip(INIT_METHODS, (vanloan, prune, random_factors)))
"""The init functions by the names configs use (`krony.config.INIT_METHODS`)."""


def get_init(name: str | InitFn) -> InitFn:
    """An init function by name (`INITS`) or the callable itself."""
    if callable(name):
        return name
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; valid choices: {', '.join(INITS)}")
    return INITS[name]


__all__ = ["INITS", "default_offsets", "get_init", "prune", "random_factors", "rearranged", "top_singular", "vanloan"]
