"""Van Loan, pruning and random initialisations: float64 identities."""

import pytest
import torch
from einops import rearrange

from krony import kron_weight, prune, random_factors, vanloan
from krony.layers.kronecker_init import INITS, get_init

M1, N1, M2, N2 = 6, 4, 3, 5


def kron_sum(r, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, M1, N1, generator=g, dtype=dtype)
    B = torch.randn(r, M2, N2, generator=g, dtype=dtype)
    return kron_weight(A, B)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_vanloan_recovers_an_exact_kronecker_sum(r):
    W = kron_sum(r)
    A, B, s = vanloan(W, (M1, N1), factors=r)
    assert A.shape == (r, M1, N1) and B.shape == (r, M2, N2) and s.shape == (r,)
    torch.testing.assert_close(kron_weight(A, B, s), W, atol=1e-10, rtol=1e-10)


def test_vanloan_recovers_float32_to_float_precision():
    W = kron_sum(2, dtype=torch.float32)
    A, B, s = vanloan(W, (M1, N1), factors=2)
    assert A.dtype == torch.float32
    torch.testing.assert_close(kron_weight(A, B, s), W, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("r", [1, 2, 4])
def test_vanloan_error_is_the_discarded_singular_values(r):
    W = torch.randn(M1 * M2, N1 * N2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    A, B, s = vanloan(W, (M1, N1), factors=r)
    R = rearrange(W, "(m1 m2) (n1 n2) -> (m1 n1) (m2 n2)", m1=M1, m2=M2, n1=N1, n2=N2)
    sv = torch.linalg.svdvals(R)
    err = (W - kron_weight(A, B, s)).norm()
    torch.testing.assert_close(err, sv[r:].square().sum().sqrt())


def test_vanloan_lowrank_is_the_authors_float32_randomised_svd():
    W = kron_sum(2)
    torch.manual_seed(0)
    A, B, s = vanloan(W, (M1, N1), factors=2, svd="lowrank")
    torch.testing.assert_close(kron_weight(A, B, s), W, atol=1e-5, rtol=1e-5)  # float32, not float64
    # the same draws as the authors' call: torch.svd_lowrank(R, q=r, niter=10) on a float32 R
    torch.manual_seed(0)
    R = rearrange(W.float(), "(m1 m2) (n1 n2) -> (m1 n1) (m2 n2)", m1=M1, m2=M2, n1=N1, n2=N2)
    U, S, _ = torch.svd_lowrank(R, q=2, niter=10)
    torch.testing.assert_close(A[0].flatten(), (U[:, 0] * S[0].sqrt()).double())


@pytest.mark.parametrize("shape, a_dims", [((3072, 768), (64, 32)), ((768, 3072), (32, 64)),
                                           ((3072, 768), (768, 768)), ((3072, 768), (1536, 768))])
def test_fast_vanloan_equals_the_full_svd_at_gpt2_width(shape, a_dims):
    """Top-r from the Gram matrix = the exact SVD's factors to 1e-6 relative, up to sign (67m, 81m, 96m)."""
    g = torch.Generator().manual_seed(0)
    out, inp = shape
    W = torch.randn(out, inp, generator=g, dtype=torch.float64) * 0.02
    A, B, _ = vanloan(W, a_dims, factors=2)
    m1, n1 = a_dims
    m2, n2 = out // m1, inp // n1
    R = rearrange(W, "(m1 m2) (n1 n2) -> (m1 n1) (m2 n2)", m1=m1, m2=m2, n1=n1, n2=n2)
    U, S, Vh = torch.linalg.svd(R, full_matrices=False)
    for i in range(2):
        a_ref = (U[:, i] * S[i].sqrt()).reshape(m1, n1)
        b_ref = (Vh[i] * S[i].sqrt()).reshape(m2, n2)
        sign = torch.sign((A[i] * a_ref).sum())
        assert (A[i] - sign * a_ref).norm() / a_ref.norm() < 1e-6
        assert (B[i] - sign * b_ref).norm() / b_ref.norm() < 1e-6


def test_adaptive_normalisation_keeps_the_norm():
    W = torch.randn(M1 * M2, N1 * N2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    A, B, s = vanloan(W, (M1, N1), factors=2, normalize=True)
    plain = vanloan(W, (M1, N1), factors=2)
    assert kron_weight(*plain).norm() < W.norm()  # plain VL keeps only part of the norm
    torch.testing.assert_close(kron_weight(A, B, s).norm(), W.norm())
    assert torch.all(s > 1)
    torch.testing.assert_close(A, plain[0])  # the scale lives in s


def test_prune_keeps_the_interleaved_entries():
    W = torch.arange(M1 * M2 * N1 * N2, dtype=torch.float64).reshape(M1 * M2, N1 * N2)
    A, B, s = prune(W, (M1, N1), offsets=[(1, 2)])
    torch.testing.assert_close(A[0], W[1::M2, 2::N2])
    expected_B = torch.zeros(M2, N2, dtype=torch.float64)
    expected_B[1, 2] = 1
    torch.testing.assert_close(B[0], expected_B)
    W_hat = kron_weight(A, B, s)
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[1::M2, 2::N2] = True
    torch.testing.assert_close(W_hat[mask], W[mask])
    assert torch.all(W_hat[~mask] == 0)


def test_prune_default_is_the_even_rows_for_a_2x1_b():
    W = torch.randn(8, 3, dtype=torch.float64)
    A, B, _ = prune(W, (4, 3))  # B (2, 1): "keep the even rows, B = [1, 0]^T"
    torch.testing.assert_close(A[0], W[0::2])
    assert B[0].flatten().tolist() == [1.0, 0.0]


def test_prune_with_all_offsets_is_exact():
    W = torch.randn(M1 * M2, N1 * N2, dtype=torch.float64)
    A, B, s = prune(W, (M1, N1), factors=M2 * N2)
    torch.testing.assert_close(kron_weight(A, B, s), W)


def test_prune_fill_value():
    W = torch.randn(M1 * M2, N1 * N2)
    _, B, _ = prune(W, (M1, N1), fill=0.1)
    assert B[0, 0, 0] == 1.0
    assert torch.allclose(B[0].flatten()[1:], torch.tensor(0.1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(factors=2, offsets=[(0, 0), (0, 0)]), "distinct"),
        (dict(factors=1, offsets=[(3, 0)]), "outside B"),
        (dict(factors=M2 * N2 + 1), "at most"),
    ],
)
def test_prune_rejects_bad_offsets(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prune(torch.randn(M1 * M2, N1 * N2), (M1, N1), **kwargs)


@pytest.mark.parametrize("r", [1, 3])
def test_random_factors_std(r):
    W = torch.empty(3072, 768)
    A, B, s = random_factors(W, (64, 32), factors=r, generator=torch.Generator().manual_seed(0))
    assert abs(kron_weight(A, B, s).std().item() - 0.02) < 0.001


def test_init_errors():
    W = torch.randn(12, 20)
    with pytest.raises(ValueError, match="factors must be an integer >= 1"):
        vanloan(W, (6, 4), factors=0)
    with pytest.raises(ValueError, match="do not divide"):
        vanloan(W, (5, 4))
    with pytest.raises(ValueError, match="valid choices: exact, lowrank"):
        vanloan(W, (6, 4), svd="qr")
    with pytest.raises(ValueError, match="at most"):
        vanloan(W, (6, 4), factors=11)
    with pytest.raises(ValueError, match="unknown init 'svd'; valid choices: vanloan, prune, random"):
        get_init("svd")
    assert set(INITS) == {"vanloan", "prune", "random"}
