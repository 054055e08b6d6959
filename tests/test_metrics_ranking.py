"""Kendall tau over gene programs, Pearson r of expression change, gene overlap."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr

from c2s_engine.errors import MetricError
from c2s_engine.metrics import (
    gene_overlap,
    gene_ranks,
    kendall_tau,
    mean_expression,
    mean_kendall_tau,
    pearson_delta,
    sentence_genes,
)

PROGRAM = ["A", "B", "C", "D"]


def test_sentence_genes_strips_trailing_periods_like_reconstruct():
    assert sentence_genes("CD3E  IL7R. . LYZ.") == ["CD3E", "IL7R", "LYZ"]
    assert sentence_genes(["CD3E", "LYZ."]) == ["CD3E", "LYZ"]


def test_gene_ranks_from_a_sentence_tie_missing_genes_at_the_lowest_rank():
    # 4 distinct genes generated (X is not in the program): D shares rank 5.
    np.testing.assert_array_equal(gene_ranks("C A X B", PROGRAM), [2, 4, 1, 5])
    # A repeated gene keeps its first place and counts once.
    np.testing.assert_array_equal(gene_ranks("B A B", PROGRAM), [2, 1, 3, 3])
    np.testing.assert_array_equal(gene_ranks("", PROGRAM), [1, 1, 1, 1])


def test_gene_ranks_from_expression_values_tie_zeros_and_absent_genes():
    values = pd.Series({"A": 5.0, "B": 0.0, "C": 2.0, "E": 9.0})
    np.testing.assert_array_equal(gene_ranks(values, PROGRAM), [1, 3, 2, 3])
    np.testing.assert_array_equal(gene_ranks({"A": 1.0, "B": 1.0, "C": 3.0}, PROGRAM),
                                  [2, 2, 1, 4])


def test_kendall_tau_matches_hand_count_without_ties():
    # ranks gen (2, 4, 1, 5) vs ref (1, 2, 3, 4): pairs AB+ AC- AD+ BC- BD+ CD+ -> (4 - 2) / 6.
    assert kendall_tau("C A X B", "A B C D Y", PROGRAM) == pytest.approx(1 / 3)


def test_kendall_tau_with_missing_genes_tied_is_tau_b():
    # gen "B": A, C, D missing -> ranks (2, 1, 2, 2); ref (1, 2, 3, 4).
    # concordant: BC, BD; discordant: AB; 3 pairs tied in gen only ->
    # tau_b = (2 - 1) / sqrt((6 - 3) * (6 - 0)).
    assert kendall_tau("B", "A B C D", PROGRAM) == pytest.approx(1 / math.sqrt(18))


def test_kendall_tau_against_mean_expression_of_real_cells():
    real = pd.Series({"A": 3.0, "B": 2.0, "C": 1.0, "D": 0.0})
    assert kendall_tau("A B C", real, PROGRAM) == pytest.approx(1.0)
    assert kendall_tau("C B A", real, ["A", "B", "C"]) == pytest.approx(-1.0)
    # D (unexpressed in the real cells, absent from the sentence) is last in both: 3 of the 6
    # pairs agree, 3 disagree.
    assert kendall_tau("C B A", real, PROGRAM) == pytest.approx(0.0)


def test_kendall_tau_is_nan_when_no_program_gene_is_generated():
    assert math.isnan(kendall_tau("X Y Z", "A B C D", PROGRAM))


def test_mean_kendall_tau_averages_pairs_and_skips_undefined_ones():
    generated = ["C A X B", "A B C D", "X Y"]
    references = ["A B C D Y", "A B C D", "A B C D"]
    assert mean_kendall_tau(generated, references, PROGRAM) == pytest.approx((1 / 3 + 1) / 2)
    assert math.isnan(mean_kendall_tau(["X"], ["A B"], PROGRAM))
    with pytest.raises(MetricError, match="2 generated cells but 1 references"):
        mean_kendall_tau(["A", "B"], ["A"], PROGRAM)


def test_kendall_tau_needs_a_program_of_two_genes():
    with pytest.raises(MetricError, match="needs at least 2 genes, got 1.*Fix"):
        kendall_tau("A B", "A B", ["A", "A"])


def cells(X, genes) -> ad.AnnData:
    adata = ad.AnnData(X=X)
    adata.var_names = genes
    return adata


def test_mean_expression_averages_sparse_and_dense_cells():
    X = np.array([[1.0, 0.0, 3.0], [3.0, 2.0, 0.0]])
    expected = pd.Series([2.0, 1.0, 1.5], index=["A", "B", "C"])
    pd.testing.assert_series_equal(mean_expression(cells(X, ["A", "B", "C"])), expected,
                                   check_names=False)
    pd.testing.assert_series_equal(mean_expression(cells(sp.csr_matrix(X), ["A", "B", "C"])),
                                   expected, check_names=False)


def test_pearson_delta_on_hand_made_changes():
    genes = ["A", "B", "C"]
    control = cells(np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), genes)
    real = cells(np.array([[2.0, 1.0, 0.0]]), genes)  # change (1, 0, -1)
    assert pearson_delta(control, real, cells(np.array([[3.0, 1.0, -1.0]]), genes)) \
        == pytest.approx(1.0)
    assert pearson_delta(control, real, cells(np.array([[0.0, 1.0, 2.0]]), genes)) \
        == pytest.approx(-1.0)
    # A flat prediction has no correlation to speak of.
    assert math.isnan(pearson_delta(control, real, control))


def test_pearson_delta_matches_scipy_and_aligns_genes_by_name():
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(12)]
    control, real, predicted = (rng.gamma(2.0, size=(n, 12)) for n in (20, 15, 25))
    expected = pearsonr(real.mean(0) - control.mean(0), predicted.mean(0) - control.mean(0))[0]
    order = rng.permutation(12)
    shuffled = cells(predicted[:, order], [genes[i] for i in order])
    assert pearson_delta(cells(control, genes), cells(real, genes), shuffled) == \
        pytest.approx(expected)
    subset = ["G1", "G4", "G7", "G9"]
    idx = [1, 4, 7, 9]
    expected_subset = pearsonr(real.mean(0)[idx] - control.mean(0)[idx],
                               predicted.mean(0)[idx] - control.mean(0)[idx])[0]
    assert pearson_delta(cells(control, genes), cells(real, genes), shuffled,
                         genes=subset) == pytest.approx(expected_subset)


def test_pearson_delta_errors_name_missing_genes():
    genes = ["A", "B", "C"]
    a = cells(np.ones((2, 3)), genes)
    with pytest.raises(MetricError, match="1 requested genes are not in the predicted cells"):
        pearson_delta(a, a, cells(np.ones((2, 2)), ["A", "B"]), genes=["A", "C"])
    with pytest.raises(MetricError, match="only 1 gene"):
        pearson_delta(a, a, cells(np.ones((2, 2)), ["A", "Z"]))


def test_gene_overlap_is_the_recovered_fraction_of_reference_genes():
    assert gene_overlap("A B C D", "B D E") == pytest.approx(2 / 3)
    assert gene_overlap(["E", "D.", "B", "B"], "B D E") == 1.0
    assert gene_overlap("", "B D E") == 0.0
    with pytest.raises(MetricError, match="the reference sentence names no gene"):
        gene_overlap("A", " ")
