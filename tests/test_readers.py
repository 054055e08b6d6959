"""Readers: every supported format on real or hand-made files, and every bad input."""

from __future__ import annotations

import gzip
import shutil
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from conftest import shared_file

from c2s_engine.errors import (
    CorruptFileError,
    EmptyDataError,
    EncodingError,
    MissingFileError,
    NonNumericDataError,
    UnsupportedFormatError,
)
from c2s_engine.readers import detect_orientation, read

COUNTS = np.array(
    [
        [0, 3, 0, 1, 7],
        [2, 0, 0, 0, 1],
        [0, 0, 5, 4, 0],
        [1, 1, 1, 0, 9],
    ],
    dtype=np.float32,
)
BARCODES = [
    "AAACCTGAGAAACCAT-1",
    "AAACCTGAGAAACCGC-1",
    "AAACCTGAGAAACCTA-1",
    "AAACCTGAGAAACGAG-1",
]
GENE_IDS = [f"ENSG{n:011d}" for n in (141510, 105329, 167286, 198851, 177455)]
SYMBOLS = ["TP53", "TGFB1", "CD3D", "CD3E", "CD19"]


def _dense(adata: ad.AnnData) -> np.ndarray:
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def write_10x_h5(path, counts=COUNTS, barcodes=BARCODES, ids=GENE_IDS, names=SYMBOLS):
    """CellRanger v3 layout: /matrix holds a genes x cells CSC (== cells x genes CSR)."""
    csr = sp.csr_matrix(counts.astype(np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"] = csr.data
        m["indices"] = csr.indices.astype(np.int64)
        m["indptr"] = csr.indptr.astype(np.int64)
        m["shape"] = np.array([counts.shape[1], counts.shape[0]], dtype=np.int32)
        m["barcodes"] = np.array(barcodes, dtype="S")
        feat = m.create_group("features")
        feat["id"] = np.array(ids, dtype="S")
        feat["name"] = np.array(names, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * len(ids), dtype="S")
        feat["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])


def write_mtx_folder(folder, v3=True, names=SYMBOLS):
    folder.mkdir(parents=True)
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(COUNTS.T))
    genes = "".join(
        f"{i}\t{n}" + ("\tGene Expression" if v3 else "") + "\n"
        for i, n in zip(GENE_IDS, names, strict=True)
    )
    barcodes = "".join(b + "\n" for b in BARCODES)
    if not v3:
        (folder / "genes.tsv").write_text(genes)
        (folder / "barcodes.tsv").write_text(barcodes)
        return folder
    with (
        (folder / "matrix.mtx").open("rb") as src,
        gzip.open(folder / "matrix.mtx.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    (folder / "matrix.mtx").unlink()
    with gzip.open(folder / "features.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write(genes)
    with gzip.open(folder / "barcodes.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write(barcodes)
    return folder


# ---- real files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath",
    [
        "kang_pbmc_ifnb/kang_pbmc_ifnb.h5ad",
        "mouse10x_ensembl/mouse10x_10k_subset_ensembl.h5ad",
        "baron_mouse_pancreas/baron_mouse1_pancreas.h5ad",
        "pbmc68k_with_counts/pbmc68k_reduced_with_counts.h5ad",
        "osmfish_sscortex/osmfish_sscortex.h5ad",
    ],
)
def test_real_h5ad_matches_anndata_and_records_source(relpath, tmp_path):
    path = shared_file(relpath)
    adata = read(path)
    reference = ad.read_h5ad(path)
    assert adata.shape == reference.shape
    assert not adata.isbacked
    np.testing.assert_array_equal(_dense(adata[:50]), _dense(reference[:50]))
    assert adata.uns["c2s"]["source"] == {
        "path": str(path.resolve()),
        "format": "h5ad",
        "orientation": "cells_in_rows",
        "orientation_rule": "",
        "backed": False,
    }
    out = tmp_path / "round.h5ad"
    adata.write_h5ad(out)
    assert ad.read_h5ad(out).uns["c2s"]["source"]["format"] == "h5ad"


def test_osmfish_loom_has_spatial_and_matches_h5ad():
    loom = read(shared_file("osmfish_sscortex/osmFISH_SScortex_mouse_all_cells.loom"))
    h5ad = read(shared_file("osmfish_sscortex/osmfish_sscortex.h5ad"))
    assert loom.shape == (6471, 33)
    assert loom.uns["c2s"]["source"]["format"] == "loom"
    assert list(loom.var_names) == list(h5ad.var_names)
    # The h5ad conversion prefixed the loom's numeric CellIDs with "cell_".
    assert list("cell_" + loom.obs_names) == list(h5ad.obs_names)
    np.testing.assert_array_equal(_dense(loom), _dense(h5ad))
    np.testing.assert_allclose(loom.obsm["spatial"], h5ad.obsm["spatial"])
    assert loom.obs["Region"].nunique() == h5ad.obs["Region"].nunique()


def test_large_h5ad_opens_backed():
    path = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad")
    adata = read(path, max_in_memory_bytes=1024)
    assert adata.isbacked
    assert adata.uns["c2s"]["source"]["backed"] is True
    forced = read(path, backed=True)
    assert forced.isbacked
    assert not read(path, backed=False, max_in_memory_bytes=1024).isbacked


# ---- hand-made 10x files ----------------------------------------------------------------


def test_10x_h5_v3(tmp_path):
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    write_10x_h5(path)
    adata = read(path)
    np.testing.assert_array_equal(_dense(adata), COUNTS)
    assert list(adata.obs_names) == BARCODES
    assert list(adata.var_names) == GENE_IDS
    assert list(adata.var["gene_symbols"]) == SYMBOLS
    assert adata.uns["c2s"]["source"]["format"] == "10x_h5"


@pytest.mark.parametrize("v3", [True, False])
def test_10x_mtx_folder_v2_and_v3(tmp_path, v3):
    folder = write_mtx_folder(tmp_path / "filtered", v3=v3)
    adata = read(folder)
    np.testing.assert_array_equal(_dense(adata), COUNTS)
    assert list(adata.var_names) == GENE_IDS
    assert list(adata.var["gene_symbols"]) == SYMBOLS
    assert list(adata.obs_names) == BARCODES
    assert adata.uns["c2s"]["source"]["format"] == "10x_mtx"
    # The matrix file itself points at its folder.
    matrix_file = folder / ("matrix.mtx.gz" if v3 else "matrix.mtx")
    np.testing.assert_array_equal(_dense(read(matrix_file)), COUNTS)


def test_zip_of_10x_folder(tmp_path):
    folder = write_mtx_folder(tmp_path / "sample1" / "filtered_feature_bc_matrix")
    archive = tmp_path / "sample1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"filtered_feature_bc_matrix/{f.name}")
    adata = read(archive)
    np.testing.assert_array_equal(_dense(adata), COUNTS)
    assert adata.uns["c2s"]["source"]["format"] == "zip"


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(CorruptFileError, match=r"unsafe member path '\.\./\.\./evil\.txt'"):
        read(archive)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx", b"\0" * (11 * 1024**2))
    with pytest.raises(CorruptFileError, match=r"would inflate \d+-fold"):
        read(archive)


def test_zip_without_matrix(tmp_path):
    archive = tmp_path / "notes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedFormatError, match="holds no 10x matrix.mtx"):
        read(archive)


def test_mtx_folder_missing_file(tmp_path):
    folder = write_mtx_folder(tmp_path / "f")
    (folder / "barcodes.tsv.gz").unlink()
    with pytest.raises(CorruptFileError, match="lacks barcodes.tsv.gz"):
        read(folder)


def test_mtx_features_latin1(tmp_path):
    folder = write_mtx_folder(tmp_path / "f")
    lines = [
        f"{i}\t{n}\tGene Expression\n".encode() for i, n in zip(GENE_IDS, SYMBOLS, strict=True)
    ]
    lines[2] = "ENSG00000167286\tCaf\u00e9\tGene Expression\n".encode("latin-1")
    with gzip.open(folder / "features.tsv.gz", "wb") as fh:
        fh.write(b"".join(lines))
    with pytest.raises(EncodingError) as info:
        read(folder)
    assert "features.tsv.gz line 3 is not valid UTF-8" in str(info.value)
    assert "re-save the file as UTF-8" in str(info.value)


# ---- text tables ------------------------------------------------------------------------


def test_csv_cells_in_rows_detected(tmp_path):
    path = tmp_path / "cells.csv"
    pd.DataFrame(COUNTS, index=BARCODES, columns=SYMBOLS).to_csv(path)
    adata = read(path)
    np.testing.assert_array_equal(_dense(adata), COUNTS)
    assert adata.X.dtype == np.float32 and sp.isspmatrix_csr(adata.X)
    assert list(adata.var_names) == SYMBOLS
    source = adata.uns["c2s"]["source"]
    assert source["orientation"] == "cells_in_rows"
    assert source["orientation_rule"] == "row labels look like cell barcodes/names"


def test_tsv_gz_genes_in_rows_detected(tmp_path):
    path = tmp_path / "genes.tsv.gz"
    pd.DataFrame(COUNTS.T, index=SYMBOLS, columns=BARCODES).to_csv(path, sep="\t")
    adata = read(path)
    np.testing.assert_array_equal(_dense(adata), COUNTS)
    assert list(adata.obs_names) == BARCODES
    source = adata.uns["c2s"]["source"]
    assert (source["format"], source["orientation"]) == ("tsv", "genes_in_rows")
    assert source["orientation_rule"] == "column labels look like cell barcodes/names"


def test_csv_ensembl_rows_and_override(tmp_path):
    path = tmp_path / "ens.csv"
    cells = [f"c{i}" for i in range(4)]
    pd.DataFrame(COUNTS.T, index=GENE_IDS, columns=cells).to_csv(path)
    adata = read(path)
    assert list(adata.var_names) == GENE_IDS
    assert adata.uns["c2s"]["source"]["orientation_rule"] == "row labels look like Ensembl gene IDs"
    forced = read(path, genes_in_rows=False)
    assert forced.shape == (5, 4)
    assert forced.uns["c2s"]["source"]["orientation_rule"] == "given by genes_in_rows"


def test_orientation_rules():
    assert detect_orientation(SYMBOLS, ["cell_1", "cell_2", "cell_3"])[0] is True
    assert detect_orientation(["1", "2", "3"], SYMBOLS)[0] is False
    assert detect_orientation(["Cd3e", "Gapdh", "Actb"], ["x_a1", "x_b2", "y_c_3"])[0] is True
    genes_in_rows, rule = detect_orientation(["p_1a", "q_2b"], ["r_3c", "s_4d"])
    assert genes_in_rows is False and "ambiguous" in rule


def test_csv_non_numeric_value(tmp_path):
    path = tmp_path / "bad.csv"
    table = pd.DataFrame(COUNTS, index=BARCODES, columns=SYMBOLS).astype(object)
    table.loc[BARCODES[2], "CD3E"] = "n/a?"
    table.to_csv(path)
    with pytest.raises(NonNumericDataError) as info:
        read(path)
    message = str(info.value)
    assert "value 'n/a?' in row 'AAACCTGAGAAACCTA-1', column 'CD3E' is not a number" in message


def test_csv_latin1_header(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("cell,CD3E,Caf\u00e9\nAAACCTGAGAAACCAT-1,1,2\n".encode("latin-1"))
    with pytest.raises(EncodingError, match=r"latin\.csv line 1 is not valid UTF-8"):
        read(path)


def test_corrupt_gz(tmp_path):
    good = tmp_path / "good.csv.gz"
    pd.DataFrame(COUNTS, index=BARCODES, columns=SYMBOLS).to_csv(good)
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(CorruptFileError, match=r"cannot read bad\.csv\.gz as csv"):
        read(bad)


def test_truncated_h5ad(tmp_path):
    source = shared_file("baron_mouse_pancreas/baron_mouse1_pancreas.h5ad").read_bytes()
    path = tmp_path / "half.h5ad"
    path.write_bytes(source[: len(source) // 2])
    with pytest.raises(CorruptFileError, match="truncated") as info:
        read(path)
    assert "download or export it again" in str(info.value)


def test_csv_renamed_h5ad(tmp_path):
    path = tmp_path / "table.h5ad"
    pd.DataFrame(COUNTS, index=BARCODES, columns=SYMBOLS).to_csv(path)
    with pytest.raises(CorruptFileError, match="its content is text, not hdf5"):
        read(path)


def test_empty_tables(tmp_path):
    header_only = tmp_path / "header.csv"
    header_only.write_text("cell,CD3E,CD19\n")
    with pytest.raises(EmptyDataError, match="header.csv has 0 cells and 2 genes"):
        read(header_only)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(EmptyDataError, match="blank.csv is empty"):
        read(blank)
    zeros = tmp_path / "zeros.csv"
    pd.DataFrame(np.zeros((2, 3)), index=BARCODES[:2], columns=SYMBOLS[:3]).to_csv(zeros)
    with pytest.raises(EmptyDataError, match="every value of the 2 x 3 matrix is zero"):
        read(zeros)


def test_zero_cell_h5ad(tmp_path):
    path = tmp_path / "none.h5ad"
    ad.AnnData(sp.csr_matrix((0, 3), dtype=np.float32)).write_h5ad(path)
    with pytest.raises(EmptyDataError, match="has 0 cells and 3 genes"):
        read(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("seurat.rds", "convert it to .h5ad in R (e.g. SeuratDisk"),
        ("sce.Robj", "zellkonverter"),
        ("table.xlsx", "save the sheet as CSV"),
        ("data.parquet", "provide one of: .h5ad, .h5 (10x), 10x matrix.mtx(.gz) folder"),
    ],
)
def test_unsupported_formats(tmp_path, name, expected):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(UnsupportedFormatError) as info:
        read(path)
    assert expected in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match="nope.h5ad does not exist"):
        read(tmp_path / "nope.h5ad")


def test_backed_only_for_h5ad(tmp_path):
    path = tmp_path / "cells.csv"
    pd.DataFrame(COUNTS, index=BARCODES, columns=SYMBOLS).to_csv(path)
    with pytest.raises(UnsupportedFormatError, match="backed reading is only available for .h5ad"):
        read(path, backed=True)
