"""Per-cell quality-control numbers shown after a dataset is loaded.

They are read from the matrix the C2S values were made from (the counts layer, ``raw`` or
``X``, as recorded by :func:`c2s_engine.pp.prepare`), chunk by chunk. Library size is reported only when that matrix holds raw counts: a sum of
log-normalised values is not a library size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from anndata import AnnData
from scipy import sparse

#: Prefixes of mitochondrial gene symbols (human upper case, mouse title case).
MITO_PREFIXES = ("MT-", "mt-")


@dataclass
class QCSummary:
    """Medians over cells of the per-cell QC numbers (None when not meaningful)."""

    n_cells: int
    median_genes: float
    median_counts: float | None
    median_pct_mito: float | None
    n_mito_genes: int


def compute_qc(adata: AnnData, *, chunk_size: int = 10_000) -> QCSummary:
    """Write per-cell QC numbers into ``obs`` and return their medians.

    Writes
    ------
    ``obs['c2s_n_genes']`` (expressed genes); with raw counts also ``obs['c2s_total_counts']``
    and, when mitochondrial genes (``MT-``/``mt-``) are present, ``obs['c2s_pct_mito']``.
    """
    mito = np.asarray([str(g).startswith(MITO_PREFIXES) for g in adata.var_names])
    detected = str(adata.uns.get("c2s", {}).get("normalization", {}).get("detected", ""))
    counts = detected == "counts"
    n_genes = np.zeros(adata.n_obs, dtype=np.int64)
    totals = np.zeros(adata.n_obs)
    mito_totals = np.zeros(adata.n_obs)
    for start, stop, chunk in _source_chunks(adata, chunk_size):
        n_genes[start:stop] = np.asarray((chunk > 0).sum(axis=1)).ravel()
        totals[start:stop] = np.asarray(chunk.sum(axis=1)).ravel()
        if mito.any():
            mito_totals[start:stop] = np.asarray(chunk[:, mito].sum(axis=1)).ravel()
    adata.obs["c2s_n_genes"] = n_genes
    median_counts = median_mito = None
    if counts:
        adata.obs["c2s_total_counts"] = totals
        median_counts = float(np.median(totals))
        if mito.any():
            pct = np.divide(100 * mito_totals, totals, out=np.zeros_like(totals), where=totals > 0)
            adata.obs["c2s_pct_mito"] = pct
            median_mito = float(np.median(pct))
    return QCSummary(adata.n_obs, float(np.median(n_genes)), median_counts, median_mito,
                     int(mito.sum()))


def _source_chunks(adata: AnnData, chunk_size: int):
    """Row chunks (CSR) of the matrix the C2S values were made from."""
    source = str(adata.uns.get("c2s", {}).get("normalization", {}).get("source", "X"))
    if source == "raw" and adata.raw is not None:
        matrix = adata.raw.X
    elif source.startswith("layers/") and source[len("layers/"):] in adata.layers:
        matrix = adata.layers[source[len("layers/"):]]
    else:
        matrix = adata.X
    for start in range(0, adata.n_obs, chunk_size):
        stop = min(start + chunk_size, adata.n_obs)
        yield start, stop, sparse.csr_matrix(matrix[start:stop])
