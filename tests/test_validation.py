"""Validation report and prepare(): problems recorded, typed errors, data untouched on failure."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file

from c2s_engine.errors import (
    EmptyDataError,
    GeneIdentifierError,
    NegativeValuesError,
    NonFiniteValuesError,
)
from c2s_engine.genes import MOUSE
from c2s_engine.normalization import iter_expression_chunks
from c2s_engine.readers import read
from c2s_engine.validation import Problem, label_columns, prepare, validate


def _codes(report) -> dict[str, str]:
    return {p.code: p.severity for p in report.problems}


def test_pbmc68k_report(pbmc68k):
    report = validate(pbmc68k)
    assert report.ok
    assert (report.n_cells, report.n_genes) == (700, 765)
    assert (report.identifier_kind, report.symbol_source) == ("symbol", "var_names")
    assert report.organism == "Homo sapiens"
    assert report.matrix == "raw"
    assert report.normalization.startswith("adata.raw: log1p (natural log)")
    assert report.label_columns == {"bulk_labels": 10, "phase": 3, "louvain": 11}
    assert report.embeddings == ["X_pca", "X_umap"]
    assert report.spatial == {}
    assert (report.sparse, report.backed) == (False, False)
    assert _codes(report) == {"unused_scaled_matrix": "warning"}
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["ok"] is True and as_dict["label_columns"]["louvain"] == 11
    text = report.to_text()
    assert "Cells x genes:   700 x 765 (dense)" in text
    assert "Label columns:   bulk_labels (10), phase (3), louvain (11)" in text
    assert (
        "[warning] X: scaled / z-scored values (negative, non-integer); using adata.raw instead."
        in text
    )


def test_osmfish_spatial_and_short_panel():
    adata = read(shared_file("osmfish_sscortex/osmfish_sscortex.h5ad"))
    report = validate(adata)
    assert report.ok
    assert report.spatial == {"key": "spatial", "shape": [6471, 2]}
    assert report.organism == MOUSE
    assert {"ClusterName", "Region", "cell_type"} <= set(report.label_columns)
    assert "CellID" not in report.label_columns and "ClusterID" not in report.label_columns
    assert _codes(report)["few_genes"] == "warning"
    zero = next(p for p in report.problems if p.code == "all_zero_cells")
    n_zero = int((np.diff(adata.X.tocsr().indptr) == 0).sum())
    assert zero.message.startswith(f"{n_zero} cell(s) have no expressed gene")
    assert "Spatial:         obsm['spatial'] (6471, 2)" in report.to_text()


def test_label_columns_excludes_ids_and_numbers():
    n = 40
    obs = {
        "cell_type": np.array(["T", "B"] * (n // 2)),
        "barcode": [f"bc{i % 4}" for i in range(n)],
        "n_genes": np.arange(n),
        "unique_name": [f"c{i}" for i in range(n)],
        "constant": ["x"] * n,
    }
    adata = ad.AnnData(np.ones((n, 3), dtype=np.float32), obs=obs)
    assert label_columns(adata) == {"cell_type": 2}


def test_mouse10x_prepare_uses_feature_name(tmp_path):
    adata = read(shared_file("mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad"))
    with pytest.warns(UserWarning, match="1 duplicated gene name"):
        report = prepare(adata)
    assert report.identifier_kind == "ensembl"
    assert report.symbol_source == "var['feature_name']"
    assert _codes(report)["duplicate_gene_names"] == "warning"
    assert adata.var_names[0] == "Xkr4" and adata.var_names.is_unique
    c2s = adata.uns["c2s"]
    assert set(c2s) >= {"source", "identifiers", "normalization"}
    assert c2s["identifiers"]["n_duplicates_renamed"] == 1
    assert c2s["normalization"]["matrix"] == "layers/c2s_norm"
    path = tmp_path / "prepared.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["c2s"]["identifiers"]["organism"] == MOUSE
    assert back.uns["c2s"]["source"]["format"] == "h5ad"


def test_ensembl_without_symbols_is_an_error_and_data_untouched():
    adata = read(shared_file("mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad"))
    del adata.var["feature_name"]
    report = validate(adata)
    assert not report.ok
    problem = next(p for p in report.problems if p.severity == "error")
    assert problem.code == "gene_identifiers"
    assert "var_names look like Ensembl IDs" in problem.message
    names_before, uns_before = adata.var_names.copy(), dict(adata.uns["c2s"])
    with pytest.raises(GeneIdentifierError, match="choose the var column holding gene symbols"):
        prepare(adata)
    assert adata.var_names.equals(names_before)
    assert "c2s_norm" not in adata.layers
    assert dict(adata.uns["c2s"]) == uns_before


def test_gene_symbols_argument(tmp_path):
    adata = read(shared_file("mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad"))
    adata.var["my_symbols"] = adata.var.pop("feature_name")
    with pytest.warns(UserWarning):
        report = prepare(adata, gene_symbols="my_symbols", organism="mouse")
    assert report.symbol_source == "var['my_symbols']"
    assert report.organism_source == "user"
    assert adata.var_names[0] == "Xkr4"


def test_scaled_without_counts_fails_before_mutation(pbmc68k_copy):
    adata = pbmc68k_copy
    adata.raw = None
    report = validate(adata)
    assert _codes(report)["negative_values"] == "error"
    with pytest.raises(NegativeValuesError, match="X looks scaled"):
        report.raise_for_errors()
    with pytest.raises(NegativeValuesError):
        prepare(adata)
    assert "c2s" not in adata.uns and "c2s_norm" not in adata.layers


def test_nonfinite_and_empty_are_recorded_not_raised():
    X = np.array([[1.0, 0.0, 2.0], [np.nan, 3.0, 0.0], [0.0, 0.0, 0.0]])
    report = validate(ad.AnnData(X))
    assert _codes(report)["non_finite_values"] == "error"
    assert _codes(report)["all_zero_cells"] == "warning"
    with pytest.raises(NonFiniteValuesError, match="1 NaN/infinite value"):
        report.raise_for_errors()
    empty = validate(ad.AnnData(sp.csr_matrix((0, 5), dtype=np.float32)))
    assert (empty.ok, _codes(empty)) == (False, {"empty_data": "error"})
    with pytest.raises(EmptyDataError, match="the data have 0 cells and 5 genes"):
        empty.raise_for_errors()


def test_backed_validate_and_prepare():
    adata = read(shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad"), backed=True)
    report = prepare(adata)
    assert report.backed and report.sparse
    assert report.label_columns["cell_type"] == 13
    assert adata.uns["c2s"]["normalization"]["matrix"] == "on_the_fly"
    start, stop, chunk = next(iter_expression_chunks(adata, chunk_size=50))
    assert (start, stop, chunk.shape) == (0, 50, (50, 14878))


def test_problem_round_trip_to_text():
    report = validate(ad.AnnData(np.array([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0]])))
    report.problems.append(Problem("warning", "x", "something odd.", "do this."))
    assert "[warning] something odd. Fix: do this." in report.to_text()
