"""The output-error objective of data-aware inits: covariances collected by hooks, and the
whitened low-rank projection as its exact minimiser (issue 25, first part)."""

import pytest
import torch

from families import tiny_model
from krony.calibration import damped_cholesky, input_covariances, output_error, whitened_lowrank


def anisotropic(n_in: int = 32, rows: int = 500, seed: int = 0) -> torch.Tensor:
    """Inputs (n_in, rows) whose directions differ in scale by 1000x, as real activations do."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_in, rows, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, n_in, dtype=torch.float64)[:, None]


def test_the_whitened_projection_reaches_the_minimum_of_the_output_error():
    """Eckart-Young on W L: the minimum over rank-k matrices is the tail of W L's spectrum, and
    the plain truncated SVD (the weight-error minimiser) is far from it on anisotropic inputs."""
    W = torch.randn(48, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    X = anisotropic()
    C = X @ X.T
    for k in (1, 8, 31):
        U, V = whitened_lowrank(W, C, k)
        assert U.shape == (48, k) and V.shape == (k, 32)
        got = output_error(W, U @ V, C)
        assert got == pytest.approx(((W - U @ V) @ X).pow(2).sum().item(), rel=1e-9)  # the objective as defined
        tail = torch.linalg.svdvals(W @ torch.linalg.cholesky(C))[k:].pow(2).sum().item()
        assert got == pytest.approx(tail, rel=1e-6)
        P, S, Qh = torch.linalg.svd(W, full_matrices=False)
        plain = output_error(W, (P[:, :k] * S[:k]) @ Qh[:k], C)
        assert got < plain / (5 if k == 8 else 1), (k, got, plain)  # 21x lower at k = 8, 1.7x at k = 1


def test_with_white_inputs_it_is_the_truncated_svd():
    W = torch.randn(20, 30, generator=torch.Generator().manual_seed(2))
    U, V = whitened_lowrank(W, torch.eye(30), 5)
    P, S, Qh = torch.linalg.svd(W, full_matrices=False)
    torch.testing.assert_close(U @ V, (P[:, :5] * S[:5]) @ Qh[:5], atol=1e-5, rtol=1e-5)
    assert U.dtype == W.dtype == V.dtype


def test_a_singular_covariance_is_damped_and_still_beats_the_plain_svd():
    X = anisotropic(rows=10)  # 10 rows for 32 dims: C has rank 10
    C = X @ X.T
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(C - 1e-3 * torch.eye(32, dtype=C.dtype))
    L = damped_cholesky(C)
    assert torch.isfinite(L).all()
    W = torch.randn(16, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    U, V = whitened_lowrank(W, C, 4)
    P, S, Qh = torch.linalg.svd(W, full_matrices=False)
    assert output_error(W, U @ V, C) < output_error(W, (P[:, :4] * S[:4]) @ Qh[:4], C)
    with pytest.raises(ValueError, match="rank must be in 1..16"):
        whitened_lowrank(W, C, 17)


def test_input_covariances_are_the_inputs_each_module_saw():
    model = tiny_model("llama")
    tokens = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(4))
    names = ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    stats = input_covariances(model, tokens, names, batch_size=2)
    seen = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]).double())) for n in names]
    with torch.no_grad():
        model(tokens)
    for h in hooks:
        h.remove()
    for n in names:
        x = torch.cat(seen[n])
        C, rows = stats[n]
        assert rows == 30 and C.shape == (x.shape[1], x.shape[1]) and C.dtype == torch.float64
        torch.testing.assert_close(C, x.T @ x, atol=1e-8, rtol=1e-8)


def test_weighted_kron_lowers_the_output_error_from_van_loan_at_every_step():
    from krony.calibration import weighted_kron
    from krony.layers.kronecker_init import vanloan

    W = torch.randn(48, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    C = (X := anisotropic()) @ X.T
    A, B, history = weighted_kron(W, C, (12, 8), iters=10)
    assert A.shape == (12, 8) and B.shape == (4, 4)
    A0, B0, _ = vanloan(W, (12, 8))
    assert history[0] == pytest.approx(output_error(W, torch.kron(A0[0], B0[0]), C), rel=1e-9)  # starts at Van Loan
    assert all(b <= a * (1 + 1e-12) for a, b in zip(history, history[1:]))  # never up
    assert history[-1] < 0.9 * history[0]
    assert output_error(W, torch.kron(A, B), C) == pytest.approx(history[-1], rel=1e-9)


def test_weighted_kron_with_white_inputs_stays_at_van_loans_optimum():
    from krony.calibration import weighted_kron

    W = torch.randn(20, 12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, _, history = weighted_kron(W, torch.eye(12, dtype=torch.float64), (5, 4), iters=4)
    assert max(history) == pytest.approx(min(history), rel=1e-9)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt", "gpt2"])
def test_permuting_the_hidden_units_keeps_the_function(family):
    from krony.calibration import permute_hidden

    model = tiny_model(family)
    idx = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = model(idx).logits
        for block in range(2):
            permute_hidden(model, block, torch.randperm(192, generator=torch.Generator().manual_seed(block)))
        torch.testing.assert_close(model(idx).logits, before, atol=1e-5, rtol=1e-5)


def test_importance_ordered_prune_drops_the_least_important_units():
    """Ordered, the pruning init at B (2, 1) keeps the even positions: exactly the half of the
    units with the most output energy, so the model equals the dense one with the others removed."""
    import copy

    from krony.calibration import importance_order, permute_hidden
    from krony.compression import compress

    model = tiny_model("llama")
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(8))
    names = [f"model.layers.{b}.mlp.down_proj" for b in range(2)]
    stats = input_covariances(model, tokens, names)
    kept = torch.arange(192) % 2 == 0
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for b, name in enumerate(names):
            W = model.get_submodule(name).weight
            order = importance_order(W, stats[name][0], kept)
            energy = stats[name][0].diagonal() * W.double().pow(2).sum(0)
            assert set(order[kept].tolist()) == set(torch.argsort(energy, descending=True)[:96].tolist())
            permute_hidden(model, b, order)
            dropped = order[~kept]
            reference.get_submodule(name).weight[:, dropped] = 0  # the dense model without them
    compress(model, scheme="96x64", init="prune")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, reference(tokens).logits, atol=1e-5, rtol=1e-5)


def _monarch_dense(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    m, _, s, _ = left.shape
    p = right.shape[-1]
    return torch.einsum("jisc,jicp->jsip", left, right).reshape(m * s, m * p)


def test_whitened_monarch_is_blockwise_optimal_with_uncorrelated_slices_and_beats_the_block_svd():
    from krony.calibration import whitened_monarch

    W = torch.randn(24, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    X = anisotropic()
    C = X @ X.T
    slices = torch.block_diag(*[C[i * 8:(i + 1) * 8, i * 8:(i + 1) * 8] for i in range(4)])  # uncorrelated slices
    left, right = whitened_monarch(W, slices, nblocks=4, block_rank=2)
    got = output_error(W, _monarch_dense(left, right), slices)
    minimum = sum(torch.linalg.svdvals(W[j * 6:(j + 1) * 6, i * 8:(i + 1) * 8]
                                       @ torch.linalg.cholesky(slices[i * 8:(i + 1) * 8, i * 8:(i + 1) * 8]))[2:].pow(2).sum()
                  for i in range(4) for j in range(4)).item()
    assert got == pytest.approx(minimum, rel=1e-6)
    from krony.layers.monarch import MonarchLinear

    plain = MonarchLinear(32, 24, nblocks=4, block_rank=2, dtype=torch.float64)
    plain.init_from(W, "project")
    for cov in (slices, C):  # with the true, correlated covariance too
        assert output_error(W, _monarch_dense(left, right), cov) < output_error(W, plain.to_dense(), cov)
