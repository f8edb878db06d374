"""The scheme registry and the paper's parameter counts (DESIGN section 2)."""

import pytest
import torch

from krony import GPT, GPTConfig, SCHEMES, TABLE1, compress, count_params, get_scheme, model_size

BASE = 67_816_704  # dense GPT-2 small without its 24 FFN weight matrices

# (name or dims, params per matrix, model size) exactly as in DESIGN section 2
TABLE = [
    ("67m", 3_200, 67_893_504),
    ("64x48", 3_840, 67_908_864), ("96x32", 3_840, 67_908_864),
    ("64x64", 4_672, 67_928_832), ("128x32", 4_672, 67_928_832),
    ("96x48", 5_120, 67_939_584),
    ("96x64", 6_528, 67_973_376), ("128x48", 6_528, 67_973_376),
    ("128x64", 8_480, 68_020_224),
    ("96x96", 9_472, 68_044_032), ("192x48", 9_472, 68_044_032),
    ("128x96", 12_480, 68_116_224), ("192x64", 12_480, 68_116_224),
    ("128x128", 16_528, 68_213_376),
    ("mf1", 16_528, 68_213_376),
    ("mf2", 262_153, 74_108_376),
    ("768x384", 294_920, 74_894_784),
    ("1024x384", 393_222, 77_254_032),
    ("81m", 589_828, 81_972_576),
    ("81m_alt", 589_828, 81_972_576),
    ("1024x768", 786_435, 86_691_144),
    ("96m", 1_179_650, 96_128_304),
    ("gpt2", 2_359_297, 124_439_832),
]
SECTION_3_2 = [("95m", 1_179_650, 96_128_304)]  # the paper's 95M model: A (3072, 384), B (1, 2)


@pytest.mark.parametrize("key,per_matrix,size", TABLE + SECTION_3_2)
def test_table1_model_sizes(key, per_matrix, size):
    scheme = get_scheme(key)
    assert scheme.params_per_matrix() == per_matrix
    assert model_size(scheme) == size
    assert size == BASE + 24 * per_matrix


def test_registry_has_every_row_by_name_and_dims():
    assert len(TABLE1) == len(TABLE)
    assert {get_scheme(k) for k, _, _ in TABLE} == set(TABLE1)
    for name, dims in [("67m", (64, 32)), ("mf1", (256, 64)), ("mf2", (1024, 256)), ("81m", (768, 768)),
                       ("81m_alt", (1536, 384)), ("96m", (1536, 768)), ("gpt2", (3072, 768))]:
        assert SCHEMES[name].a_dims == dims
        assert get_scheme(dims) is SCHEMES[name]
        assert get_scheme(f"{dims[0]}x{dims[1]}") is SCHEMES[name]
    assert get_scheme("81m (alt)") is SCHEMES["81m_alt"]
    assert get_scheme("32x16").a_dims == (32, 16)  # dims outside the table are a custom scheme
    assert SCHEMES["95m"].a_dims == (3072, 384) and SCHEMES["95m"].b_dims_for("expand") == (1, 2)
    assert SCHEMES["95m"].b_dims_for("contract") == (2, 1) and SCHEMES["95m"] not in TABLE1


def test_prune_on_95m_keeps_the_even_input_columns():
    """The paper's section 3.8.3 on its 95M shape: A = W[:, 0::2] and B = [[1, 0]] for c_fc
    (in the authors' Conv1D layout, fc[0::2] and B = [[1], [0]]); c_proj keeps its even outputs."""
    from krony import prune

    W = torch.randn(3072, 768)
    A, B, _ = prune(W, SCHEMES["95m"].a_dims_for("expand"))
    torch.testing.assert_close(A[0], W[:, 0::2])
    torch.testing.assert_close(B[0], torch.tensor([[1.0, 0.0]]))
    Wp = torch.randn(768, 3072)
    A, B, _ = prune(Wp, SCHEMES["95m"].a_dims_for("contract"))
    torch.testing.assert_close(A[0], Wp[0::2, :])
    torch.testing.assert_close(B[0], torch.tensor([[1.0], [0.0]]))


def test_dense_models():
    assert model_size(None) == 124_439_808
    assert model_size(config=GPTConfig.from_preset("distilgpt2")) == 81_912_576


@pytest.mark.parametrize(
    "key,factors,scalars,size",
    [
        ("mf1", 2, False, 68_610_048),  # "about 68.6M"
        ("mf1", 3, False, 69_006_720),  # "about 69M"
        ("mf2", 2, False, 80_400_048),
        ("mf2", 3, False, 86_691_720),  # "about 86.7M"
        ("mf2", 4, True, 92_983_488),  # the paper's "92.2M, 4 factors with scalars"
    ],
)
def test_table2_multi_factor_sizes(key, factors, scalars, size):
    assert model_size(key, factors=factors, scalars=scalars) == size


def test_the_92m_model_counts_as_the_paper_without_wpe():
    with_scalars = model_size("mf2", factors=4, scalars=True)
    without = model_size("mf2", factors=4, scalars=False)
    assert with_scalars - without == 4 * 2 * 12  # 96 scalars
    assert with_scalars - 1024 * 768 == 92_197_056  # wpe left out: the paper's "92.2M"
    assert get_scheme("mf2").a_dims_for("contract") == (256, 1024)


def test_other_conventions():
    assert model_size(None, convention="no_output_embedding") == 124_439_808 - 50257 * 768
    assert model_size(None, convention="non_embedding") == 124_439_808 - 50257 * 768 - 1024 * 768
    assert model_size("81m", convention="no_output_embedding") == 81_972_576 - 50257 * 768
    with pytest.raises(ValueError, match="valid choices: table1, no_output_embedding, non_embedding"):
        model_size(None, convention="kaplan")


def test_untied_head_counts_once_more():
    config = GPTConfig(tie_embeddings=False)
    assert model_size(None, config=config) == 124_439_808 + 50257 * 768
    assert model_size(None, config=config, convention="no_output_embedding") == 124_439_808


def test_meta_counting_agrees_with_a_real_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    assert count_params(model) == 124_439_808
    compress(model, "81m", init="random")
    assert count_params(model) == 81_972_576 == model_size("81m")


def test_odd_layers_only():
    # TQCompressedGPT2 compresses the odd blocks: 12 of 24 matrices
    assert model_size("81m", layers="odd") == BASE + 12 * 589_828 + 12 * 2_359_296


def test_unknown_scheme_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown scheme '80m' \(did you mean 81m\?\): valid names: 67m, mf1, mf2, 81m, 81m_alt, 96m, gpt2, 95m"):
        get_scheme("80m")
    with pytest.raises(ValueError, match="two positive integers"):
        get_scheme((0, 3))


def test_scheme_names_and_dims_are_case_insensitive():
    assert get_scheme("81M") is get_scheme("81m") is get_scheme("768X768")
    assert get_scheme(" 128x64 ").a_dims == (128, 64)
    with pytest.raises(ValueError, match=r"did you mean 81m_alt\?"):
        get_scheme("81M_ALR")


def test_dims_that_do_not_divide():
    with pytest.raises(ValueError, match=r"A dims \(100, 32\) do not divide"):
        model_size("100x32")
