"""Gene identifiers: Ensembl vs symbols, symbol columns, duplicates, organism."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from c2s_engine.errors import GeneIdentifierError
from c2s_engine.genes import (
    HUMAN,
    MOUSE,
    UNKNOWN,
    detect_identifiers,
    is_ensembl,
    organism_from_symbols,
    resolve_organism,
    use_gene_symbols,
)


def _adata(var_names, **var_columns) -> ad.AnnData:
    var = pd.DataFrame(var_columns, index=pd.Index(var_names))
    return ad.AnnData(np.ones((2, len(var_names)), dtype=np.float32), var=var)


@pytest.fixture
def mouse10x():
    return ad.read_h5ad(shared_file("mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad"))


def test_is_ensembl_pattern():
    names = [
        "ENSG00000141510",
        "ENSMUSG00000051951.3",
        "ENSG0000014151",
        "TP53",
        "ENSGALG00000000003",
    ]
    assert is_ensembl(names).tolist() == [True, True, False, False, True]


def test_mouse10x_ensembl_symbols_duplicates_and_organism(mouse10x, tmp_path):
    identifiers = detect_identifiers(mouse10x)
    assert identifiers.kind == "ensembl"
    assert identifiers.fraction_ensembl == 1.0
    assert identifiers.symbol_column == "feature_name"
    assert (identifiers.organism, identifiers.organism_source) == (MOUSE, "detected")

    ids = list(mouse10x.var_names)
    symbols = list(mouse10x.var["feature_name"].astype(str))
    with pytest.warns(UserWarning, match=r"1 duplicated gene name\(s\) made unique .*Rp1"):
        use_gene_symbols(mouse10x)
    assert list(mouse10x.var["gene_ids"]) == ids
    assert mouse10x.var_names.is_unique
    rp1 = [i for i, s in enumerate(symbols) if s == "Rp1"]
    assert [mouse10x.var_names[i] for i in rp1] == ["Rp1", "Rp1-1"]
    assert mouse10x.var_names[0] == "Xkr4"  # mouse case kept, never upper-cased
    record = mouse10x.uns["c2s"]["identifiers"]
    assert record == {
        "kind": "ensembl",
        "symbol_column": "feature_name",
        "organism": MOUSE,
        "organism_source": "detected",
        "n_duplicates_renamed": 1,
    }
    path = tmp_path / "ids.h5ad"
    mouse10x.write_h5ad(path)
    assert ad.read_h5ad(path).uns["c2s"]["identifiers"] == record


def test_ensembl_without_symbol_column_raises(mouse10x):
    del mouse10x.var["feature_name"]
    before = mouse10x.var_names.copy()
    with pytest.raises(GeneIdentifierError) as info:
        use_gene_symbols(mouse10x)
    message = str(info.value)
    assert "var_names look like Ensembl IDs (e.g. ENSMUSG00000051951)" in message
    assert "no gene-symbol column was found (var columns: gene_ids)" in message
    assert "Fix: choose the var column holding gene symbols (gene_symbols=...)" in message
    assert mouse10x.var_names.equals(before)


def test_explicit_column_and_missing_symbols_fall_back_to_id():
    ids = ["ENSG00000141510", "ENSG00000105329", "ENSG00000167286"]
    adata = _adata(ids, my_names=["TP53", np.nan, ""])
    use_gene_symbols(adata, "my_names")
    assert list(adata.var_names) == ["TP53", "ENSG00000105329", "ENSG00000167286"]
    assert adata.uns["c2s"]["identifiers"]["symbol_column"] == "my_names"
    assert adata.uns["c2s"]["identifiers"]["organism"] == HUMAN


def test_unknown_column_lists_columns():
    adata = _adata(["ENSG00000141510"], gene_ids=["ENSG00000141510"])
    with pytest.raises(
        GeneIdentifierError, match=r"var column 'symbolz' does not exist \(var columns: gene_ids\)"
    ):
        use_gene_symbols(adata, "symbolz")


def test_symbol_column_search_is_case_insensitive_and_skips_id_columns():
    ids = ["ENSG00000141510", "ENSG00000105329"]
    adata = _adata(ids, Name=list(ids), Gene_Symbol=["TP53", "TGFB1"])
    assert detect_identifiers(adata).symbol_column == "Gene_Symbol"


def test_symbols_kept_and_duplicates_made_unique():
    adata = _adata(["CD3E", "CD3E", "MS4A1"])
    with pytest.warns(UserWarning, match="1 duplicated"):
        use_gene_symbols(adata)
    assert list(adata.var_names) == ["CD3E", "CD3E-1", "MS4A1"]
    record = adata.uns["c2s"]["identifiers"]
    assert record["kind"] == "symbol" and record["symbol_column"] == ""


def test_mixed_identifiers():
    names = ["ENSG00000141510", "ENSG00000105329", "CD3E", "CD19", "MS4A1"]
    identifiers = detect_identifiers(_adata(names))
    assert identifiers.kind == "mixed"
    assert identifiers.fraction_ensembl == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("symbols", "expected"),
    [
        (["CD3E", "MS4A1", "C1orf112", "RP11-206L10.9", "HLA-DRA"], HUMAN),
        (["Cd3e", "Ms4a1", "0610007P14Rik", "Gm1992", "Xkr4"], MOUSE),
        (["1", "2"], UNKNOWN),
    ],
)
def test_organism_from_symbols(symbols, expected):
    assert organism_from_symbols(symbols) == expected


def test_organism_on_real_data():
    kang = ad.read_h5ad(shared_file("kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad"), backed="r")
    assert detect_identifiers(kang).organism == HUMAN
    baron = ad.read_h5ad(shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad"), backed="r")
    assert detect_identifiers(baron).organism == MOUSE


@pytest.mark.parametrize(
    ("word", "expected"),
    [("human", HUMAN), ("Homo sapiens", HUMAN), ("MOUSE", MOUSE), ("Mus musculus", MOUSE)],
)
def test_organism_override(word, expected):
    identifiers = detect_identifiers(_adata(["CD3E", "MS4A1"]), organism=word)
    assert (identifiers.organism, identifiers.organism_source) == (expected, "user")
    assert resolve_organism(word) == expected


def test_unsupported_organism():
    with pytest.raises(
        GeneIdentifierError, match="organism 'rat' is not supported. Fix: pass organism='human'"
    ):
        resolve_organism("rat")
