"""Per-cell QC numbers on hand-made counts and on the example data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from c2s_engine.qc import compute_qc
from c2s_engine.validation import prepare


def test_counts_give_genes_library_size_and_mito_share():
    X = np.array([[3, 0, 1, 0], [0, 0, 0, 0], [1, 2, 0, 5]], dtype=np.float32)
    adata = ad.AnnData(sp.csr_matrix(X), var=pd.DataFrame(index=["CD3E", "LYZ", "MT-CO1", "NKG7"]))
    prepare(adata)
    summary = compute_qc(adata)
    assert adata.obs["c2s_n_genes"].tolist() == [2, 0, 3]
    assert adata.obs["c2s_total_counts"].tolist() == [4, 0, 8]
    np.testing.assert_allclose(adata.obs["c2s_pct_mito"], [25.0, 0.0, 0.0])
    assert summary.median_genes == 2 and summary.median_counts == 4 and summary.n_mito_genes == 1


def test_log_normalised_data_reports_genes_but_no_library_size(pbmc68k_copy):
    prepare(pbmc68k_copy)  # X is scaled; the log-normalised .raw is the source
    summary = compute_qc(pbmc68k_copy)
    expected = np.asarray((pbmc68k_copy.raw.X > 0).sum(axis=1)).ravel()
    assert pbmc68k_copy.obs["c2s_n_genes"].tolist() == expected.tolist()
    assert summary.median_counts is None and "c2s_total_counts" not in pbmc68k_copy.obs
