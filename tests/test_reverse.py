"""Reverse transform: the fit, reconstruction of any sentences, and the round trip on real data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_file

import c2s_engine.normalization as normalization
from c2s_engine.errors import SentenceError
from c2s_engine.reverse import ReverseFit, fit_reverse, reconstruct, reconstruction_r2
from c2s_engine.sentences import compute_sentences

SLOPE, INTERCEPT = -0.6, 2.3


@pytest.fixture
def expression_as_is(monkeypatch):
    """Feed X to the transforms unchanged, so synthetic values are the expression exactly."""

    def chunks(adata, chunk_size=10_000):
        X = sp.csr_matrix(adata.X, dtype=np.float32)
        for start in range(0, adata.n_obs, chunk_size):
            stop = min(start + chunk_size, adata.n_obs)
            yield start, stop, X[start:stop]

    monkeypatch.setattr(normalization, "iter_expression_chunks", chunks)
    monkeypatch.setattr(normalization, "iter_source_chunks", chunks)


def model_adata(n_cells: int = 50, n_genes: int = 60, noise: float = 0.0) -> ad.AnnData:
    """Cells whose j-th highest gene has expression INTERCEPT + SLOPE * log10(1 + j) (+ noise)."""
    rng = np.random.default_rng(0)
    X = np.zeros((n_cells, n_genes), dtype=np.float32)
    for i in range(n_cells):
        n_expressed = int(rng.integers(3, 31))
        genes = rng.choice(n_genes, n_expressed, replace=False)
        values = INTERCEPT + SLOPE * np.log10(1 + np.arange(n_expressed))
        X[i, genes] = values + noise * rng.random(n_expressed)
    adata = ad.AnnData(sp.csr_matrix(X))
    adata.var_names = [f"G{j}" for j in range(n_genes)]
    return adata


def test_fit_recovers_the_model_exactly(expression_as_is, tmp_path):
    adata = model_adata()
    compute_sentences(adata, top_k=25, tie_break="index")
    fit = fit_reverse(adata, chunk_size=7)
    assert fit.slope == pytest.approx(SLOPE, abs=1e-6)
    assert fit.intercept == pytest.approx(INTERCEPT, abs=1e-6)
    assert fit.r2 == pytest.approx(1.0, abs=1e-9)
    n_expressed = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    assert fit.n_points == int(np.minimum(n_expressed, 25).sum())
    assert fit.top_k == 25

    path = tmp_path / "fit.h5ad"
    adata.write_h5ad(path)
    stored = ad.read_h5ad(path).uns["c2s"]["reverse"]
    assert ReverseFit.from_dict(stored) == fit


def test_chunked_fit_equals_a_direct_least_squares_fit(expression_as_is):
    adata = model_adata(noise=0.3)
    compute_sentences(adata, top_k=20, seed=1)
    ranks = adata.obsm["c2s_ranks"]
    rows, positions = np.nonzero(ranks >= 0)
    y = adata.X.toarray()[rows, ranks[rows, positions]].astype(np.float64)
    x = np.log10(1 + positions)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    fit = fit_reverse(adata, chunk_size=3)
    assert fit.slope == pytest.approx(slope, rel=1e-9)
    assert fit.intercept == pytest.approx(intercept, rel=1e-9)
    assert fit.r2 == pytest.approx(r2, rel=1e-9)
    assert 0.5 < fit.r2 < 1.0


def test_fit_needs_ranks_and_two_positions(expression_as_is):
    adata = model_adata()
    with pytest.raises(
        SentenceError, match=r"no cell sentences found under adata.obsm\['c2s_ranks'\]"
    ):
        fit_reverse(adata)
    compute_sentences(adata, top_k=1)
    with pytest.raises(SentenceError, match="too few genes to fit the reverse transform"):
        fit_reverse(adata)


FIT = ReverseFit(slope=-1.0, intercept=2.0, r2=0.9, n_points=10, top_k=5)
VOCAB = ["A", "B", "C", "D"]


def test_reconstruct_positions_unknown_words_and_repeats():
    sentences = ["B A foo C.", "D D A", "", "A. B . x"]
    out = reconstruct(sentences, VOCAB, FIT)
    expected = np.array(
        [
            [2 - np.log10(2), 2.0, 2 - np.log10(4), 0.0],  # foo keeps its place: C is 4th
            [2 - np.log10(3), 0.0, 0.0, 2.0],  # D kept at its first position
            [0.0, 0.0, 0.0, 0.0],
            [2.0, 2 - np.log10(2), 0.0, 0.0],  # the lone "." is not a word
        ],
        dtype=np.float32,
    )
    assert sp.issparse(out.X) and out.X.format == "csr" and out.X.dtype == np.float32
    np.testing.assert_allclose(out.X.toarray(), expected, rtol=1e-6)
    assert list(out.var_names) == VOCAB
    assert list(out.obs_names) == ["0", "1", "2", "3"]
    assert out.obs["n_genes_reconstructed"].tolist() == [3, 2, 0, 2]
    assert out.obs["n_unknown_words"].tolist() == [1, 0, 0, 1]
    assert out.obs["n_repeated_genes"].tolist() == [0, 1, 0, 0]
    assert out.uns["c2s"]["reconstruction"] == {
        "n_sentences": 4,
        "n_words": 10,
        "n_unknown_words": 2,
        "n_repeated_genes": 1,
        "n_empty_sentences": 1,
        "duplicate": "first",
    }
    assert out.uns["c2s"]["reverse"] == FIT.to_dict()


def test_reconstruct_mean_position_for_repeats_and_clipping():
    mean = reconstruct(["D B D D"], VOCAB, FIT, duplicate="mean")
    # D at positions 0, 2, 3 -> mean 5/3.
    np.testing.assert_allclose(
        mean.X.toarray(), [[0.0, 2 - np.log10(2), 0.0, 2 - np.log10(1 + 5 / 3)]], rtol=1e-6
    )
    low = ReverseFit(slope=-1.0, intercept=0.5, r2=0.9, n_points=10, top_k=5)
    clipped = reconstruct(["A B C D"], VOCAB, low.to_dict())  # dict form accepted too
    # log10(1 + rank) > 0.5 from rank 3 on: D is clipped to 0 and not stored.
    np.testing.assert_allclose(
        clipped.X.toarray(), [[0.5, 0.5 - np.log10(2), 0.5 - np.log10(3), 0.0]], rtol=1e-6
    )
    assert clipped.X.nnz == 3 and clipped.obs["n_genes_reconstructed"].tolist() == [3]


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_reconstruct_from_series_and_anndata_vocabulary(tmp_path):
    vocab = ad.AnnData(sp.csr_matrix((2, 3), dtype=np.float32))
    vocab.var_names = ["Ins1", "Gcg", "Ins1"]  # duplicated symbol: the first one wins
    vocab.var["gene_ids"] = ["E1", "E2", "E3"]
    sentences = pd.Series(["Ins1 Gcg Ins1", "Sst"], index=["cellA", "cellB"])
    out = reconstruct(sentences, vocab, FIT)
    assert list(out.obs_names) == ["cellA", "cellB"]
    assert out.var["gene_ids"].tolist() == ["E1", "E2", "E3"]
    np.testing.assert_allclose(out.X.toarray(), [[2.0, 2 - np.log10(2), 0.0], [0, 0, 0]], rtol=1e-6)
    assert out.obs["n_unknown_words"].tolist() == [0, 1]

    path = tmp_path / "rebuilt.h5ad"
    out.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert dict(back.uns["c2s"]["reconstruction"]) == out.uns["c2s"]["reconstruction"]
    assert ReverseFit.from_dict(back.uns["c2s"]["reverse"]) == FIT


def test_reconstruct_rejects_bad_input():
    with pytest.raises(SentenceError, match=r"unknown duplicate rule 'last'.*'first', 'mean'"):
        reconstruct(["A"], VOCAB, FIT, duplicate="last")
    with pytest.raises(
        SentenceError, match=r"1 sentences are not text \(first at position 1: None\)"
    ):
        reconstruct(["A", None], VOCAB, FIT)
    with pytest.raises(SentenceError, match="reverse-transform parameters are incomplete"):
        reconstruct(["A"], VOCAB, {"slope": -1.0})


def test_round_trip_r2_on_real_counts(tmp_path, capsys):
    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    adata = ad.read_h5ad(path)
    compute_sentences(adata, top_k=200, seed=0)
    fit = fit_reverse(adata)
    r2 = reconstruction_r2(adata)
    with capsys.disabled():
        print(f"\nbaron mouse pancreas top-200: fit R^2 = {fit.r2:.4f}, round-trip R^2 = {r2:.4f}")
    assert fit.slope < 0 < fit.intercept
    assert r2 > 0.7
    # Nothing clips within the top 200, so the round trip reproduces the fit's own R^2.
    assert r2 == pytest.approx(fit.r2, abs=1e-6)
    assert fit.n_points == int((adata.obsm["c2s_ranks"] >= 0).sum())

    written = tmp_path / "baron.h5ad"
    adata.write_h5ad(written)
    assert ReverseFit.from_dict(ad.read_h5ad(written).uns["c2s"]["reverse"]) == fit
