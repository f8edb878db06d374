"""Calibration statistics and the output-error objective of data-aware inits (issue 25, first part).

A plain init minimises the weight error ||W - Ŵ||_F; a calibrated one minimises the error on
real inputs, ||(W - Ŵ) X||_F, where the columns of X are the inputs the matrix sees. Only the
input covariance C = X Xᵀ enters:

    ||(W - Ŵ) X||_F² = tr((W - Ŵ) C (W - Ŵ)ᵀ)

- `input_covariances` collects C (float64) of chosen modules over calibration tokens with
  forward pre-hooks, one pass, nothing kept but the (in, in) sums.
- `output_error` evaluates the objective from C.
- `whitened_lowrank` is its exact minimiser among rank-k matrices (SVD-LLM's truncation-aware
  whitening): with C = L Lᵀ (Cholesky), the best rank-k Ŵ is the truncated SVD of W L, mapped
  back by L⁻¹; a singular C (fewer tokens than dims) is damped by a small multiple of its
  mean diagonal first.
- `weighted_kron` lowers the objective for one Kronecker product A ⊗ B by alternating least
  squares from Van Loan's factors: with B fixed the objective is quadratic in A and its
  minimiser solves an n1 x n1 system (and the same for B with A fixed), both written with C
  alone. Each half-step can only lower the objective.
- `whitened_monarch` fits each of Monarch's m x m blocks W[j, i] (rank b) by `whitened_lowrank`
  with the covariance of its own input slice, C[i, i]: the exact minimiser when the m input
  slices are uncorrelated, and the block-diagonal approximation of C otherwise (the cross
  terms couple the blocks of a block row, which no block-wise closed form can follow).
- `permute_hidden` reorders a block's FFN hidden units (the rows of its expand matrices and the
  columns of its contract matrices, from the family table): the model computes the same
  function. `importance_order` places the units with the most output energy (diag(C) times the
  squared column norms of the contract matrix, Wanda's and LLM-Pruner's measure) where a
  pruning init keeps units, so pruning drops the least important half instead of every other one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from krony.lm import logits
from krony.targets import get_family


@torch.no_grad()
def input_covariances(model: nn.Module, tokens: torch.Tensor, names: Sequence[str],
                      batch_size: int = 8) -> dict[str, tuple[torch.Tensor, int]]:
    """{module name: (sum of x xᵀ over every input row x, float64 (in, in); the row count)} of
    the modules `names` of `model` over `tokens` (N, T), one forward per batch."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name: str):
        def collect(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (rows, in)
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] += x.shape[0]
        return collect

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(tokens), batch_size):
            logits(model, tokens[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n], counts[n]) for n in names}


def output_error(W: torch.Tensor, W_hat: torch.Tensor, C: torch.Tensor) -> float:
    """||(W - Ŵ) X||_F² from the input covariance C = X Xᵀ: tr(D C Dᵀ) with D = W - Ŵ."""
    D = (W - W_hat).detach().double()
    return float(torch.einsum("oi,ij,oj->", D, C.double(), D))


def damped_cholesky(C: torch.Tensor, damping: float = 1e-6) -> torch.Tensor:
    """The lower Cholesky factor L of C; when C does not factor (a covariance of fewer rows than
    dims is singular), of C plus `damping` times its mean diagonal on the diagonal, the damping
    raised tenfold until it does."""
    C = C.double()
    eye = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
    scale = float(C.diagonal().mean()) or 1.0
    for lam in [0.0] + [damping * 10**i for i in range(12)]:
        L, info = torch.linalg.cholesky_ex(C + lam * scale * eye)
        if int(info) == 0:
            return L
    raise ValueError("the input covariance cannot be factored even with damping: its inputs are not finite")


def whitened_lowrank(W: torch.Tensor, C: torch.Tensor, rank: int,
                     damping: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (out, k), V (k, in)) whose product minimises ||(W - U V) X||_F over rank-k matrices,
    given C = X Xᵀ; float64 inside, W's dtype out. With C = I it is the truncated SVD of W."""
    if not 1 <= rank <= min(W.shape):
        raise ValueError(f"rank must be in 1..{min(W.shape)} for a {tuple(W.shape)} matrix, got {rank}")
    L = damped_cholesky(C, damping)
    P, S, Qh = torch.linalg.svd(W.double() @ L, full_matrices=False)  # W L = P diag(S) Qh
    root = S[:rank].sqrt()
    U = P[:, :rank] * root  # (out, k)
    V = torch.linalg.solve_triangular(L, root[:, None] * Qh[:rank], upper=False, left=False)  # V L = diag(√S_k) Qh_k
    return U.to(W.dtype), V.to(W.dtype)


def _damped_solve(G: torch.Tensor, rhs: torch.Tensor, damping: float = 1e-10) -> torch.Tensor:
    """X with X G = rhs for a symmetric positive semi-definite G (ridge-damped when singular)."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    scale = float(G.diagonal().mean()) or 1.0
    for lam in [0.0] + [damping * 10**i for i in range(12)]:
        L, info = torch.linalg.cholesky_ex(G + lam * scale * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs.T, L).T
    raise ValueError("the least-squares system cannot be solved: its inputs are not finite")


def weighted_kron(W: torch.Tensor, C: torch.Tensor, a_dims: tuple[int, int], iters: int = 10,
                  start: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(A (m1, n1), B (m2, n2), the objective after Van Loan and after each iteration): one
    Kronecker product lowering ||(W - A ⊗ B) X||_F² by alternating least squares, given
    C = X Xᵀ, from `start` (default: Van Loan's factors). float64 inside, W's dtype out."""
    from krony.layers.kronecker_init import vanloan

    m1, n1 = a_dims
    m2, n2 = W.shape[0] // m1, W.shape[1] // n1
    if start is None:
        A0, B0, _ = vanloan(W.double(), a_dims)
        start = (A0[0], B0[0])
    A, B = (t.double() for t in start)
    W64, C64 = W.double(), C.double()
    C4 = C64.reshape(n1, n2, n1, n2)  # C[(i k), (j l)]
    WC4 = (W64 @ C64).reshape(m1, m2, n1, n2)  # (W C)[(a b), (i k)]
    history = [output_error(W64, torch.kron(A, B), C64)]
    for _ in range(iters):
        G = torch.einsum("kl,ikjl->ij", B.T @ B, C4)  # (n1, n1)
        A = _damped_solve(G, torch.einsum("bk,abik->ai", B, WC4))
        H = torch.einsum("ij,ikjl->kl", A.T @ A, C4)  # (n2, n2)
        B = _damped_solve(H, torch.einsum("ai,abik->bk", A, WC4))
        history.append(output_error(W64, torch.kron(A, B), C64))
    return A.to(W.dtype), B.to(W.dtype), history


def whitened_monarch(W: torch.Tensor, C: torch.Tensor, nblocks: int, block_rank: int,
                     damping: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(left (m_j, m_i, out/m, b), right (m_j, m_i, b, in/m)): block W[j, i] ≈ left[j, i] @ right[j, i],
    each by `whitened_lowrank` with C[i, i] (the layout `MonarchLinear` assembles its L and R from)."""
    m, b = nblocks, block_rank
    out, inp = W.shape
    if out % m or inp % m:
        raise ValueError(f"nblocks={m} must divide both dims of the {tuple(W.shape)} matrix")
    s, p = out // m, inp // m
    k = min(b, s, p)
    left = torch.zeros(m, m, s, b, dtype=W.dtype, device=W.device)
    right = torch.zeros(m, m, b, p, dtype=W.dtype, device=W.device)
    for i in range(m):
        Ci = C[i * p:(i + 1) * p, i * p:(i + 1) * p]
        for j in range(m):
            U, V = whitened_lowrank(W[j * s:(j + 1) * s, i * p:(i + 1) * p], Ci, k, damping)
            left[j, i, :, :k], right[j, i, :k] = U, V
    return left, right


@torch.no_grad()
def permute_hidden(model: nn.Module, block: int, order: torch.Tensor) -> None:
    """Make hidden unit j of block `block`'s FFN the unit `order[j]` was, in place (dense
    matrices only: before compressing). The model's function is unchanged."""
    family = get_family(model)
    blk = model.get_submodule(family.blocks)[block]
    for names, axis in ((family.expand, 0), (family.contract, 1)):  # (out, in): expand rows, contract columns
        for name in names:
            m = blk.get_submodule(name)
            dim = 1 - axis if family.transposed else axis  # Conv1D stores (in, out)
            m.weight.copy_(m.weight.index_select(dim, order.to(m.weight.device)))
            if axis == 0 and getattr(m, "bias", None) is not None:
                m.bias.copy_(m.bias[order.to(m.bias.device)])


def importance_order(W_contract: torch.Tensor, C: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The hidden-unit order that puts the most important units (output energy: C's diagonal
    times the squared columns of the contract matrix W (out, hidden)) at the positions `kept`
    (bool, hidden) in decreasing importance, the rest after them in the other positions."""
    energy = C.diagonal().double() * W_contract.double().pow(2).sum(0)
    ranked = torch.argsort(energy, descending=True)
    order = torch.empty_like(ranked)
    n = int(kept.sum())
    order[kept] = ranked[:n]
    order[~kept] = ranked[n:]
    return order


__all__ = ["damped_cholesky", "importance_order", "input_covariances", "output_error", "permute_hidden",
           "weighted_kron", "whitened_lowrank", "whitened_monarch"]
