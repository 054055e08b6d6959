"""Cell-sentence transform: exact orders, tie rules, edge cases and the AnnData API."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_file

import c2s_engine.sentences as sentences_module
from c2s_engine.errors import NegativeValuesError, NonFiniteValuesError, SentenceError
from c2s_engine.sentences import (
    compute_sentences,
    get_sentences,
    iter_sentence_chunks,
    rank_genes,
    sentences_from_ranks,
)

# The hand-made AnnData holds an all-zero cell on purpose; scanpy warns about it when normalising.
pytestmark = pytest.mark.filterwarnings("ignore:Some cells have zero counts:UserWarning")

# Genes 1 and 3 tie in cell 0; cell 1 is empty; cell 2 has two genes.
TIED = np.array(
    [
        [0.0, 3.0, 1.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [5.0, 0.0, 0.0, 0.0, 2.0],
    ]
)


def slow_reference(X: np.ndarray, top_k: int, priority: np.ndarray) -> np.ndarray:
    """Obvious per-row ranking: sort by (-float32 value, tie priority), drop zeros."""
    X = np.asarray(X, dtype=np.float32)
    out = np.full((X.shape[0], top_k), -1, dtype=np.int32)
    for i, row in enumerate(X):
        genes = np.flatnonzero(row)
        order = genes[np.lexsort((priority[genes], -row[genes]))][:top_k]
        out[i, : order.size] = order
    return out


def seed_with_order(first: int, second: int, n_genes: int) -> int:
    """A seed whose documented tie priority puts gene ``first`` before gene ``second``."""
    for seed in range(100):
        priority = np.random.default_rng(seed).permutation(n_genes)
        if priority[first] < priority[second]:
            return seed
    raise AssertionError("no such seed")


def test_index_tie_break_exact_order_dense_and_sparse():
    expected = np.array([[1, 3, 2], [-1, -1, -1], [0, 4, -1]], dtype=np.int32)
    for X in (TIED, sp.csr_matrix(TIED), sp.csc_matrix(TIED), sp.coo_array(TIED), TIED.astype(int)):
        ranks = rank_genes(X, 3, tie_break="index")
        assert ranks.dtype == np.int32
        np.testing.assert_array_equal(ranks, expected)


def test_random_tie_break_follows_documented_priority_and_seed():
    seed_1_first = seed_with_order(1, 3, 5)
    seed_3_first = seed_with_order(3, 1, 5)
    np.testing.assert_array_equal(
        rank_genes(TIED, 3, seed=seed_1_first), [[1, 3, 2], [-1, -1, -1], [0, 4, -1]]
    )
    np.testing.assert_array_equal(
        rank_genes(TIED, 3, seed=seed_3_first), [[3, 1, 2], [-1, -1, -1], [0, 4, -1]]
    )


def test_seed_changes_only_tied_genes():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 4, size=(40, 30)).astype(float)  # many ties among small counts
    a, b = rank_genes(X, 30, seed=1), rank_genes(X, 30, seed=2)
    assert not np.array_equal(a, b)
    for row, ra, rb in zip(X, a, b, strict=True):
        # The sequence of values along the sentence is the same: only equal values swap.
        np.testing.assert_array_equal(row[ra[ra >= 0]], row[rb[rb >= 0]])


def test_explicit_zeros_are_not_expressed():
    X = sp.csr_matrix(
        (np.array([0.0, 2.0, 0.0, 1.0]), np.array([0, 1, 2, 3]), np.array([0, 3, 4])), shape=(2, 4)
    )
    assert X.nnz == 4  # the zeros are stored
    np.testing.assert_array_equal(rank_genes(X, 3), [[1, -1, -1], [3, -1, -1]])


def test_top_k_larger_than_genes_pads_with_minus_one():
    ranks = rank_genes(np.array([[1.0, 2.0]]), 5)
    np.testing.assert_array_equal(ranks, [[1, 0, -1, -1, -1]])


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "200", None])
def test_bad_top_k_is_a_clear_error(bad):
    with pytest.raises(SentenceError, match=r"top_k must be a whole number of genes of at least 1"):
        rank_genes(TIED, bad)


def test_unknown_tie_break():
    with pytest.raises(SentenceError, match=r"unknown tie_break 'alphabetical'.*Fix: use one of"):
        rank_genes(TIED, 2, tie_break="alphabetical")


def test_float64_is_ranked_as_float32():
    # Distinct in float64, equal in float32: a tie, so the index rule decides.
    X = np.array([[1.0, 1.0 + 1e-12, 0.5]])
    np.testing.assert_array_equal(rank_genes(X, 3, tie_break="index"), [[0, 1, 2]])


def test_negative_and_non_finite_values_are_rejected():
    with pytest.raises(NegativeValuesError, match="negative values"):
        rank_genes(np.array([[1.0, -0.5]]), 2)
    with pytest.raises(NonFiniteValuesError, match="1 NaN or infinite values"):
        rank_genes(sp.csr_matrix(np.array([[1.0, np.nan]])), 2)


def test_negative_zero_counts_as_zero():
    np.testing.assert_array_equal(rank_genes(np.array([[-0.0, 2.0, 1.0]]), 3), [[1, 2, -1]])


def test_duplicate_sparse_entries_are_summed():
    X = sp.csr_matrix(
        (np.array([1.0, 1.5, 2.0]), np.array([0, 0, 1]), np.array([0, 3])), shape=(1, 2)
    )
    np.testing.assert_array_equal(rank_genes(X, 2), [[0, 1]])  # gene 0 holds 2.5


@pytest.mark.parametrize("top_k", [1, 5, 12, 40])
def test_matches_slow_reference_on_random_sparse(top_k, monkeypatch):
    rng = np.random.default_rng(7)
    dense = sp.random(300, 120, density=0.4, random_state=rng, format="csr").toarray()
    # Small integer levels on a log scale give many ties and long rows (> 2 K) so the
    # bucket filter runs; a few very large and tiny values stretch the float exponent range.
    dense[dense > 0] = np.log10(1 + np.ceil(dense[dense > 0] * 6))
    dense[0, :5] = [1e30, 1e-30, 3e-38, 7.0, 7.0]
    dense[5] = 0.0
    dense[10:20, 8:] = 0.0  # short cells (< 12 genes) among long ones in the same block
    priority = np.random.default_rng(3).permutation(120)
    expected = slow_reference(dense, top_k, priority)
    np.testing.assert_array_equal(rank_genes(sp.csr_matrix(dense), top_k, seed=3), expected)
    np.testing.assert_array_equal(rank_genes(dense, top_k, seed=3), expected)
    # Tiny blocks and chunks must not change anything.
    monkeypatch.setattr(sentences_module, "_BLOCK_VALUES", 64)
    np.testing.assert_array_equal(rank_genes(dense, top_k, seed=3, chunk_size=7), expected)
    index_order = slow_reference(dense, top_k, np.arange(120))
    np.testing.assert_array_equal(rank_genes(dense, top_k, tie_break="index"), index_order)


def test_unlucky_sample_still_gives_the_exact_top_k():
    # Every 8th gene (what the threshold estimate samples) is high, the others low, so the
    # estimated threshold keeps too few values and the cell must fall back to all of them.
    positions = np.arange(400)
    row = np.where(positions % 8 == 0, 10.0 + positions, 1.0 + positions / 1000)
    X = np.vstack([row, row[::-1], np.ones(400)])
    priority = np.random.default_rng(0).permutation(400)
    np.testing.assert_array_equal(rank_genes(X, 100, seed=0), slow_reference(X, 100, priority))


def test_threads_do_not_change_the_result(monkeypatch):
    rng = np.random.default_rng(5)
    X = sp.random(300, 80, density=0.5, random_state=rng, format="csr")
    X.data = np.round(X.data * 5)
    monkeypatch.setattr(sentences_module, "_BLOCK_VALUES", 160)  # ~4 rows per block
    monkeypatch.setattr(sentences_module, "_THREADS", 1)
    serial = rank_genes(X, 15, seed=2)
    monkeypatch.setattr(sentences_module, "_THREADS", 4)
    np.testing.assert_array_equal(rank_genes(X, 15, seed=2), serial)
    with pytest.raises(NegativeValuesError):  # an error inside a worker thread reaches the caller
        rank_genes(-X, 15)


def test_chunk_size_invariance():
    rng = np.random.default_rng(11)
    X = sp.random(101, 50, density=0.3, random_state=rng, format="csr")
    X.data = np.round(X.data * 4)
    full = rank_genes(X, 10, seed=5)
    for chunk_size in (1, 13, 100, 1000):
        np.testing.assert_array_equal(rank_genes(X, 10, seed=5, chunk_size=chunk_size), full)
        dense = rank_genes(X.toarray(), 10, seed=5, chunk_size=chunk_size)
        np.testing.assert_array_equal(dense, full)


def test_sentences_from_ranks_joins_names():
    names = ["CD3D", "MS4A1", "LYZ"]
    ranks = np.array([[2, 0, -1], [-1, -1, -1], [1, -1, -1]])
    assert sentences_from_ranks(ranks, names) == ["LYZ CD3D", "", "MS4A1"]


def test_sentences_from_very_wide_ranks_in_row_chunks():
    # 1M columns: the per-row lengths are computed a few rows at a time.
    ranks = np.full((5, 1_000_001), -1, dtype=np.int32)
    ranks[0, :2] = [1, 0]
    ranks[3, :3] = [2, 2, 1]
    ranks[4, 0] = 0
    expected = ["MS4A1 CD3D", "", "", "LYZ LYZ MS4A1", "CD3D"]
    assert sentences_from_ranks(ranks, ["CD3D", "MS4A1", "LYZ"]) == expected


def test_sentences_from_ranks_empty_first_row_and_non_ascii_names():
    names = ["CD3D", "Zfp36l1-ψ", "ÄRL1", "TCRα/β", "MS4A1"]
    ranks = np.array([[-1, -1, -1], [2, 1, 3], [4, -1, -1], [-1, -1, -1], [3, 0, 2]])
    assert sentences_from_ranks(ranks, names) == [
        "",
        "ÄRL1 Zfp36l1-ψ TCRα/β",
        "MS4A1",
        "",
        "TCRα/β CD3D ÄRL1",
    ]
    assert sentences_from_ranks(np.full((2, 4), -1), names) == ["", ""]
    assert sentences_from_ranks(np.empty((0, 3), dtype=int), names) == []
    with pytest.raises(SentenceError, match=r"a gene name contains a NUL character.*Fix: rename"):
        sentences_from_ranks(np.array([[0]]), ["CD3D", "BAD\x00NAME"])


def test_sentences_do_not_depend_on_the_bytes_per_pass(monkeypatch):
    rng = np.random.default_rng(4)
    names = [f"G{i}" + "é" * int(i % 3) for i in range(50)]
    ranks = rng.integers(-1, 50, size=(37, 9))
    expected = [" ".join(names[g] for g in row if g >= 0) for row in ranks]
    assert sentences_from_ranks(ranks, names) == expected
    monkeypatch.setattr(sentences_module, "_SENTENCE_PASS_BYTES", 1)  # one row per pass
    assert sentences_from_ranks(ranks, names) == expected
    monkeypatch.setattr(sentences_module, "_SENTENCE_PASS_BYTES", 100)  # a few rows per pass
    assert sentences_from_ranks(ranks, names) == expected


def counts_adata() -> ad.AnnData:
    counts = np.array(
        [
            [0, 5, 1, 5, 0, 2],
            [0, 0, 0, 0, 0, 0],
            [9, 0, 0, 0, 3, 0],
            [1, 2, 3, 4, 5, 6],
        ],
        dtype=np.float32,
    )
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = ["c0", "c1", "c2", "c3"]
    adata.var_names = ["A", "B", "C", "D", "E", "F"]
    return adata


def test_compute_sentences_on_counts_writes_ranks_and_record(tmp_path):
    adata = counts_adata()
    compute_sentences(adata, top_k=3, tie_break="index")
    # Normalisation is monotone within a cell, so the order is that of the counts.
    np.testing.assert_array_equal(
        adata.obsm["c2s_ranks"], [[1, 3, 5], [-1, -1, -1], [0, 4, -1], [5, 4, 3]]
    )
    record = {
        "key": "c2s_ranks",
        "top_k": 3,
        "tie_break": "index",
        "seed": -1,
        "n_vars": 6,
        "n_empty_cells": 1,
        "n_short_cells": 1,
    }
    assert adata.uns["c2s"]["sentences"] == record
    assert get_sentences(adata) == ["B D F", "", "A E", "F E D"]

    path = tmp_path / "ranked.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert {k: back.uns["c2s"]["sentences"][k] for k in record} == record
    np.testing.assert_array_equal(back.obsm["c2s_ranks"], adata.obsm["c2s_ranks"])
    assert get_sentences(back, n_genes=1) == ["B", "", "A", "F"]


def test_get_sentences_selects_cells_and_truncates():
    adata = counts_adata()
    compute_sentences(adata, top_k=3, tie_break="index")
    assert get_sentences(adata, cells=["c3", "c0"], n_genes=2) == ["F E", "B D"]
    assert get_sentences(adata, cells=[2]) == ["A E"]
    assert get_sentences(adata, cells=np.array([True, False, False, True])) == ["B D F", "F E D"]
    with pytest.raises(
        SentenceError, match=r"1 requested cells are not in the data, e.g. \['nope'\]"
    ):
        get_sentences(adata, cells=["c0", "nope"])
    with pytest.raises(SentenceError, match=r"n_genes=4 asks for more genes than the 3 stored"):
        get_sentences(adata, n_genes=4)
    with pytest.raises(
        SentenceError, match="boolean cell mask has 2 entries but there are 4 cells"
    ):
        get_sentences(adata, cells=np.array([True, False]))


def test_missing_and_stale_ranks_raise():
    adata = counts_adata()
    with pytest.raises(
        SentenceError, match=r"no cell sentences found.*Fix: run .*compute_sentences"
    ):
        get_sentences(adata)
    compute_sentences(adata, top_k=3)
    subset = adata[:, :4].copy()
    with pytest.raises(
        SentenceError, match=r"computed for 6 genes but the data now has 4.*recompute"
    ):
        get_sentences(subset)


def test_iter_sentence_chunks_streams_in_input_order():
    adata = counts_adata()
    chunks = list(iter_sentence_chunks(adata, top_k=2, tie_break="index", chunk_size=3))
    assert [list(ids) for ids, _ in chunks] == [["c0", "c1", "c2"], ["c3"]]
    assert [s for _, sents in chunks for s in sents] == ["B D", "", "A E", "F E"]
    assert "c2s_ranks" not in adata.obsm  # streaming writes nothing


def test_backed_anndata_gives_the_same_ranks(tmp_path):
    rng = np.random.default_rng(2)
    counts = sp.random(60, 40, density=0.3, random_state=rng, format="csr")
    counts.data = np.ceil(counts.data * 20).astype(np.float32)
    adata = ad.AnnData(counts)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    compute_sentences(adata, top_k=8, seed=4)
    backed = ad.read_h5ad(path, backed="r")
    compute_sentences(backed, top_k=8, seed=4, chunk_size=7)
    np.testing.assert_array_equal(backed.obsm["c2s_ranks"], adata.obsm["c2s_ranks"])
    backed.file.close()


def test_real_pbmc_matches_slow_reference(pbmc68k_copy):
    """pbmc68k_reduced: X is scaled, .raw holds log-normalised data; sentences use the latter."""
    from c2s_engine.normalization import iter_expression_chunks

    adata = pbmc68k_copy
    compute_sentences(adata, top_k=100, seed=0)
    expression = sp.vstack([block for _, _, block in iter_expression_chunks(adata)]).toarray()
    priority = np.random.default_rng(0).permutation(adata.n_vars)
    np.testing.assert_array_equal(
        adata.obsm["c2s_ranks"], slow_reference(expression, 100, priority)
    )
    first = get_sentences(adata, cells=[0])[0].split()
    assert len(first) == 100 and set(first) <= set(adata.var_names)


def test_real_baron_counts_sentences():
    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    adata = ad.read_h5ad(path)[:200].copy()
    compute_sentences(adata, top_k=200, seed=0)
    counts = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    # Normalisation is monotone within a cell: ranks of the raw counts are the same.
    np.testing.assert_array_equal(adata.obsm["c2s_ranks"], rank_genes(counts, 200, seed=0))
    sentences = pd.Series(get_sentences(adata), index=adata.obs_names)
    beta = sentences[adata.obs["cell_type"] == "beta"]
    # Insulin leads the sentences of beta cells.
    assert (beta.str.split().str[:5].map(lambda g: "Ins1" in g or "Ins2" in g)).mean() > 0.9


def _kang(counts_layer: bool) -> ad.AnnData:
    adata = ad.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"))
    if not counts_layer:  # then the natural-log X is the source
        del adata.layers["counts_recovered"]
    return adata


@pytest.mark.parametrize(
    ("dataset", "source"),
    [
        ("pbmc68k", "raw"),
        ("baron", "X"),
        ("kang_counts", "layers/counts_recovered"),
        ("kang_log1p", "X"),
    ],
)
def test_ranking_the_source_equals_ranking_c2s_expression(dataset, source, pbmc68k):
    """Sentences rank the stored source; that must give the ranks of the normalised values."""
    from c2s_engine.normalization import detect_normalization, iter_expression_chunks

    adata = {
        "pbmc68k": lambda: pbmc68k.copy(),
        "baron": lambda: ad.read_h5ad(
            shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
        ),
        "kang_counts": lambda: _kang(counts_layer=True),
        "kang_log1p": lambda: _kang(counts_layer=False),
    }[dataset]()
    assert detect_normalization(adata).source == source
    expression = sp.vstack([block for _, _, block in iter_expression_chunks(adata)]).tocsr()
    full_length = int(np.diff(expression.indptr).max())  # every expressed gene of every cell
    compute_sentences(adata, top_k=full_length, seed=3, chunk_size=500)
    expected = rank_genes(expression, full_length, seed=3)
    np.testing.assert_array_equal(adata.obsm["c2s_ranks"], expected)
    # The comparison covers ties: many neighbours in the sentences hold equal values.
    dense = expression.toarray()
    values = np.take_along_axis(dense, np.maximum(expected, 0), axis=1)
    tied = (values[:, 1:] == values[:, :-1]) & (expected[:, 1:] >= 0)
    assert tied.sum() > 10_000


def test_compute_sentences_does_not_normalise(monkeypatch):
    import c2s_engine.normalization as normalization

    def no_conversion(*args, **kwargs):
        raise AssertionError("sentences must rank the source without converting it")

    monkeypatch.setattr(normalization, "to_c2s", no_conversion)
    adata = counts_adata()
    compute_sentences(adata, top_k=3, tie_break="index")
    np.testing.assert_array_equal(
        adata.obsm["c2s_ranks"], [[1, 3, 5], [-1, -1, -1], [0, 4, -1], [5, 4, 3]]
    )
    chunks = list(iter_sentence_chunks(adata, top_k=2, tie_break="index"))
    assert chunks[0][1] == ["B D", "", "A E", "F E"]
