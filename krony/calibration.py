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
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from krony.lm import logits


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
    D = (W - W_hat).double()
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


__all__ = ["damped_cholesky", "input_covariances", "output_error", "whitened_lowrank"]
