"""scFID, MMD, Wasserstein and their per-condition averaging, against hand-computed values."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import wasserstein_distance
from sklearn.metrics.pairwise import rbf_kernel

from c2s_engine.errors import MetricError, ObsColumnError
from c2s_engine.metrics import (
    FunctionEmbedding,
    PCAEmbedding,
    align_genes,
    cell_matrix,
    compare_distributions,
    frechet_distance,
    median_bandwidth,
    mmd_rbf,
    scfid,
    wasserstein,
)


def whitened(n: int, d: int, seed: int) -> np.ndarray:
    """n points in d dims with sample mean exactly 0 and sample covariance exactly I."""
    z = np.random.default_rng(seed).normal(size=(n, d))
    z -= z.mean(axis=0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


# --- scFID -----------------------------------------------------------------------------------

def test_scfid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert scfid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_scfid_of_a_shifted_set_is_the_squared_shift():
    x = np.random.default_rng(1).normal(size=(300, 5)) @ np.diag([1.0, 2.0, 0.5, 3.0, 1.0])
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert scfid(x, x + shift) == pytest.approx(shift @ shift, rel=1e-9)  # 14.25


def test_scfid_of_gaussians_with_diagonal_covariances_matches_closed_form():
    # Commuting covariances diag(a^2), diag(b^2): Tr(...) = sum((a - b)^2).
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    mu_r, mu_g = np.array([0.0, 1.0, 0.0]), np.array([1.0, 1.0, 2.0])
    real = whitened(500, 3, seed=2) * a + mu_r
    generated = whitened(400, 3, seed=3) * b + mu_g
    expected = (mu_r - mu_g) @ (mu_r - mu_g) + ((a - b) ** 2).sum()  # 5 + 5
    assert scfid(real, generated) == pytest.approx(expected, rel=1e-8)
    assert scfid(generated, real) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_one_dimensional_gaussians():
    # N(0, 4) vs N(1, 1): 1 + 4 + 1 - 2 * sqrt(4 * 1) = 2.
    assert frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]),
                            np.array([[1.0]])) == pytest.approx(2.0)


def test_scfid_with_fewer_cells_than_dimensions_stays_finite_and_real():
    x = np.random.default_rng(4).normal(size=(4, 12))  # rank-3 covariance
    assert scfid(x, x) == pytest.approx(0.0, abs=1e-5)
    assert scfid(x, x + 1.0) == pytest.approx(12.0, abs=1e-5)


def test_frechet_distance_refuses_a_covariance_product_without_real_root():
    with pytest.raises(MetricError, match="no real square root.*Fix: use more cells"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_scfid_needs_two_cells_and_equal_dimensions():
    with pytest.raises(MetricError, match="the generated cells has 1 cells; at least 2"):
        scfid(np.zeros((3, 2)), np.zeros((1, 2)))
    with pytest.raises(MetricError, match="real cells have 2 dims but generated cells 3"):
        scfid(np.zeros((3, 2)), np.zeros((3, 3)))


# --- MMD -------------------------------------------------------------------------------------

def test_mmd_matches_a_hand_computed_unbiased_estimate():
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])
    # sigma = 1, k = exp(-d^2 / 2); within-set means over i != j only.
    k_xx, k_yy = np.exp(-1 / 2), np.exp(-4 / 2)
    k_xy = np.mean(np.exp(-np.array([9, 25, 4, 16]) / 2))
    assert mmd_rbf(x, y, bandwidth=1.0) == pytest.approx(k_xx + k_yy - 2 * k_xy, rel=1e-12)


def test_median_heuristic_is_the_median_pairwise_distance_of_the_pooled_sample():
    x, y = np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])
    # Pairwise distances 1 | 2 | 3, 5, 2, 4 -> median of (1, 2, 2, 3, 4, 5) = 2.5.
    assert median_bandwidth(x, y) == pytest.approx(2.5)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(x, y, bandwidth=2.5))


def test_mmd_matches_sklearn_rbf_kernel_reference():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 4)), rng.normal(loc=0.5, size=(20, 4))
    sigma = 1.7
    gamma = 1 / (2 * sigma**2)
    k_xx, k_yy, k_xy = rbf_kernel(x, x, gamma=gamma), rbf_kernel(y, y, gamma=gamma), \
        rbf_kernel(x, y, gamma=gamma)
    expected = ((k_xx.sum() - np.trace(k_xx)) / (30 * 29) + (k_yy.sum() - np.trace(k_yy))
                / (20 * 19) - 2 * k_xy.mean())
    assert mmd_rbf(x, y, bandwidth=sigma) == pytest.approx(expected, rel=1e-10)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_shifted_ones():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 5)), rng.normal(size=(300, 5))
    same = mmd_rbf(x, y)
    shifted = mmd_rbf(x, y + 1.0)
    assert abs(same) < 0.01
    assert shifted > 0.2
    assert mmd_rbf(y + 1.0, x) == pytest.approx(shifted)


def test_mmd_refuses_a_non_positive_bandwidth():
    with pytest.raises(MetricError, match="bandwidth must be > 0"):
        mmd_rbf(np.zeros((2, 1)), np.ones((2, 1)), bandwidth=0.0)


# --- Wasserstein -----------------------------------------------------------------------------

def test_wasserstein_is_the_mean_of_per_dimension_distances():
    x = np.array([[0.0, 0.0], [1.0, 2.0]])
    y = np.array([[0.0, 1.0], [1.0, 3.0]])
    assert wasserstein(x, y) == pytest.approx(0.5)  # dims: 0 and 1


def test_wasserstein_of_a_shift_is_the_shift_and_matches_scipy_in_one_dimension():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(50, 3)), rng.exponential(size=(70, 3))
    assert wasserstein(x, x - 0.75) == pytest.approx(0.75)
    assert wasserstein(x[:, 0], y[:, 0]) == pytest.approx(wasserstein_distance(x[:, 0], y[:, 0]))


# --- embeddings ------------------------------------------------------------------------------

def gene_adata(X, genes, **obs) -> ad.AnnData:
    adata = ad.AnnData(X=X, obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(X.shape[0])]))
    adata.var_names = genes
    return adata


def test_align_genes_reorders_and_zero_fills_absent_genes():
    adata = gene_adata(sp.csr_matrix(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])),
                       ["A", "B", "C"])
    aligned = align_genes(adata, ["C", "Z", "A"])
    np.testing.assert_array_equal(aligned.toarray(), [[3.0, 0.0, 1.0], [6.0, 0.0, 4.0]])
    with pytest.raises(MetricError, match="none of the reference genes"):
        align_genes(adata, ["X", "Y"])


def test_cell_matrix_prefers_the_recorded_c2s_layer():
    adata = gene_adata(np.array([[10.0, 0.0], [0.0, 10.0]]), ["A", "B"])
    adata.layers["c2s_norm"] = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert cell_matrix(adata) is adata.X
    adata.uns["c2s"] = {"normalization": {"matrix": "layers/c2s_norm", "target_sum": 1e4}}
    np.testing.assert_array_equal(np.asarray(cell_matrix(adata)), [[1.0, 0.0], [0.0, 1.0]])
    assert cell_matrix(adata, "X") is adata.X
    with pytest.raises(MetricError, match="no layer 'counts'"):
        cell_matrix(adata, "counts")


def test_pca_embedding_is_fitted_on_real_cells_and_aligns_generated_genes():
    rng = np.random.default_rng(8)
    X = rng.poisson(2.0, size=(60, 20)).astype(np.float32)
    genes = [f"G{i}" for i in range(20)]
    real = gene_adata(sp.csr_matrix(X), genes)
    embedding = PCAEmbedding(n_components=5, seed=0).fit(real)
    reference = embedding.transform(real)
    assert reference.shape == (60, 5)
    permuted = gene_adata(X[:, ::-1].copy(), genes[::-1])
    np.testing.assert_allclose(embedding.transform(permuted), reference, atol=1e-5)
    dropped = gene_adata(X[:, 1:].copy(), genes[1:])
    zeroed = X.copy()
    zeroed[:, 0] = 0
    np.testing.assert_allclose(embedding.transform(dropped),
                               embedding.transform(gene_adata(zeroed, genes)), atol=1e-5)
    described = embedding.describe()
    assert described["name"] == "pca"
    assert described["params"]["n_components"] == 5
    assert described["params"]["n_reference_cells"] == 60
    assert described["params"]["n_genes"] == 20
    assert 0 < described["params"]["explained_variance"] <= 1


def test_pca_embedding_uses_at_most_min_shape_minus_one_components():
    real = gene_adata(np.random.default_rng(9).normal(size=(6, 30)), [f"G{i}" for i in range(30)])
    assert PCAEmbedding(50).fit(real).describe()["params"]["n_components"] == 5
    with pytest.raises(MetricError, match="has not been fitted"):
        PCAEmbedding().transform(real)


def test_function_embedding_checks_its_output():
    cells = gene_adata(np.ones((3, 2)), ["A", "B"])
    with pytest.raises(MetricError, match=r"returned shape \(2, 2\) for 3 cells"):
        FunctionEmbedding(lambda a: np.zeros((2, 2)), "bad").transform(cells)
    with pytest.raises(MetricError, match="NaN or infinite"):
        FunctionEmbedding(lambda a: np.full((3, 2), np.nan), "nan").transform(cells)


# --- per-condition comparison ----------------------------------------------------------------

def identity() -> FunctionEmbedding:
    return FunctionEmbedding(lambda a: np.asarray(a.X), "identity", {"dims": 2})


def conditioned_pair():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(40, 2)), rng.normal(size=(30, 2))
    real = gene_adata(np.vstack([a, b, rng.normal(size=(5, 2))]), ["G1", "G2"],
                      cell_type=["T"] * 40 + ["B"] * 30 + ["NK"] * 5,
                      stim=["ifn"] * 75)
    shift = 0.5
    generated = gene_adata(np.vstack([a + shift, b, rng.normal(size=(1, 2))]), ["G1", "G2"],
                           cell_type=["T"] * 40 + ["B"] * 30 + ["DC"], stim=["ifn"] * 71)
    return real, generated, shift


def test_compare_distributions_averages_metrics_over_conditions():
    real, generated, shift = conditioned_pair()
    result = compare_distributions(real, generated, condition_key=["cell_type", "stim"],
                                   embedding=identity())
    table = result.per_condition
    assert list(table.index) == ["B | ifn", "T | ifn"]
    assert result.skipped == ["DC | ifn", "NK | ifn"]  # only in one set
    assert table.loc["T | ifn", "scfid"] == pytest.approx(2 * shift**2)
    assert table.loc["B | ifn", "scfid"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["T | ifn", "wasserstein"] == pytest.approx(shift)
    assert table.loc["B | ifn", "wasserstein"] == 0.0
    assert table.loc["T | ifn", "mmd"] > table.loc["B | ifn", "mmd"]
    assert table.loc["T | ifn", ["n_real", "n_generated"]].tolist() == [40, 40]
    assert result.summary["scfid"] == pytest.approx(shift**2)  # (2 shift^2 + 0) / 2
    assert result.summary["wasserstein"] == pytest.approx(shift / 2)
    assert result.summary["mmd"] == pytest.approx(table["mmd"].mean())
    assert result.embedding == {"name": "identity", "params": {"dims": 2}}
    assert result.condition_key == ["cell_type", "stim"]


def test_compare_distributions_result_survives_h5ad_round_trip(tmp_path):
    real, generated, _ = conditioned_pair()
    result = compare_distributions(real, generated, condition_key="cell_type",
                                   metrics=("scfid", "wasserstein"))
    assert set(result.summary) == {"scfid", "wasserstein"}
    assert result.embedding["name"] == "pca"
    assert result.embedding["params"]["n_components"] == 1  # 2 genes -> 1 PC
    holder = ad.AnnData(np.zeros((1, 1)))
    holder.uns["c2s"] = {"evaluation": result.to_dict()}
    holder.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad").uns["c2s"]["evaluation"]
    assert back["summary"]["scfid"] == pytest.approx(result.summary["scfid"])
    assert list(back["per_condition"]["condition"]) == ["B", "T"]
    np.testing.assert_allclose(back["per_condition"]["scfid"],
                               result.per_condition["scfid"].to_numpy())
    assert list(back["skipped"]) == ["DC", "NK"]
    assert back["embedding"]["params"]["layer"] == ""


def test_compare_distributions_without_conditions_uses_all_cells():
    real, generated, _ = conditioned_pair()
    result = compare_distributions(real, generated, embedding=identity())
    assert list(result.per_condition.index) == ["all"]
    assert result.summary["scfid"] == pytest.approx(
        scfid(np.asarray(real.X), np.asarray(generated.X)))
    assert result.summary["mmd"] == pytest.approx(mmd_rbf(np.asarray(real.X),
                                                          np.asarray(generated.X)))


def test_compare_distributions_on_pbmc_halves(pbmc68k):
    half = np.arange(pbmc68k.n_obs) % 2 == 0
    real, other = pbmc68k[half].copy(), pbmc68k[~half].copy()
    same = compare_distributions(real, real, condition_key="bulk_labels", metrics=("scfid",))
    halves = compare_distributions(real, other, condition_key="bulk_labels")
    assert same.summary["scfid"] == pytest.approx(0.0, abs=1e-3)
    assert halves.summary["scfid"] > 1.0
    assert halves.summary["wasserstein"] > 0
    assert np.isfinite(halves.per_condition[["scfid", "mmd", "wasserstein"]].to_numpy()).all()


def test_reconstructed_cells_score_closer_under_their_own_conditions(pbmc68k_copy):
    from c2s_engine.pp import prepare
    from c2s_engine.reverse import fit_reverse, reconstruct
    from c2s_engine.sentences import compute_sentences, get_sentences

    real = pbmc68k_copy
    prepare(real)
    compute_sentences(real, top_k=100)
    generated = reconstruct(get_sentences(real), real, fit_reverse(real))
    generated.obs["bulk_labels"] = real.obs["bulk_labels"].to_numpy()
    shuffled = generated.copy()
    shuffled.obs["bulk_labels"] = np.random.default_rng(0).permutation(
        generated.obs["bulk_labels"].to_numpy())
    matched = compare_distributions(real, generated, condition_key="bulk_labels")
    mismatched = compare_distributions(real, shuffled, condition_key="bulk_labels")
    # The PCA read the prepared C2S layer of the real cells (all 765 genes).
    assert matched.embedding["params"]["n_genes"] == 765
    assert matched.embedding["params"]["n_components"] == 50
    for metric in ("scfid", "mmd", "wasserstein"):
        assert 0 < matched.summary[metric] < mismatched.summary[metric]


def test_compare_distributions_errors_name_the_problem():
    real, generated, _ = conditioned_pair()
    with pytest.raises(MetricError, match="unknown metric.*'fid'.*Fix: choose from scfid"):
        compare_distributions(real, generated, metrics=("fid",))
    with pytest.raises(ObsColumnError, match="the generated cells have no obs column 'donor'"):
        real.obs["donor"] = "d1"
        compare_distributions(real, generated, condition_key="donor")
    generated.obs["cell_type"] = "other"
    with pytest.raises(MetricError, match="no condition has at least 2 cells in both"):
        compare_distributions(real, generated, condition_key="cell_type",
                              embedding=identity())
