"""What a plot of the cells needs: a 2-D UMAP, and the values to colour the cells by.

The UMAP is computed with scanpy only when the data has none, from the C2S-normalised
expression (``layers['c2s_norm']``, written by :func:`c2s_engine.pp.prepare`), so ``X`` is never
changed. Colours come from an obs column or from one gene's C2S-normalised expression.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from c2s_engine.errors import ObsColumnError

UMAP_KEY = "X_umap"
NORM_LAYER = "c2s_norm"
ColorKind = Literal["categorical", "numeric"]


def ensure_umap(
    adata: AnnData, *, n_pcs: int = 50, n_neighbors: int = 15, seed: int = 0
) -> str:
    """Make sure ``adata.obsm['X_umap']`` exists, computing it with scanpy when missing.

    Parameters
    ----------
    adata
        Prepared data; modified in place only when it has no UMAP.
    n_pcs
        Principal components for the neighbour graph (fewer when the data is smaller).
    n_neighbors
        Neighbours per cell in the graph the UMAP is laid out from.
    seed
        Random state of the PCA and the UMAP layout.

    Returns
    -------
    str
        The obsm key of the UMAP (``'X_umap'``).

    Writes
    ------
    ``obsm['X_umap']`` and, when they are missing, ``obsm['X_pca']``, ``uns['pca']``,
    ``uns['neighbors']``, ``obsp['distances']``, ``obsp['connectivities']``, ``uns['umap']``;
    ``uns['c2s']['embedding_view']`` = ``{basis, computed_from, n_pcs, n_neighbors, seed}``.
    Nothing is written when the UMAP already exists.
    """
    import scanpy as sc

    if UMAP_KEY in adata.obsm:
        return UMAP_KEY
    if "X_pca" not in adata.obsm:
        layer = NORM_LAYER if NORM_LAYER in adata.layers else None
        n_pcs = max(1, min(n_pcs, adata.n_obs - 1, adata.n_vars - 1))
        sc.pp.pca(adata, n_comps=n_pcs, layer=layer, random_state=seed)
        source = f"layers/{layer}" if layer else "X"
    else:
        n_pcs = min(n_pcs, adata.obsm["X_pca"].shape[1])
        source = "obsm/X_pca"
    if "neighbors" not in adata.uns:
        sc.pp.neighbors(adata, n_neighbors=min(n_neighbors, adata.n_obs - 1), n_pcs=n_pcs,
                        use_rep="X_pca", random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    adata.uns.setdefault("c2s", {})["embedding_view"] = {
        "basis": UMAP_KEY, "computed_from": source, "n_pcs": int(n_pcs),
        "n_neighbors": int(n_neighbors), "seed": int(seed),
    }
    return UMAP_KEY


def gene_expression(adata: AnnData, gene: str) -> np.ndarray:
    """C2S-normalised expression of ``gene`` in every cell (``X`` when not prepared).

    Raises
    ------
    ObsColumnError
        ``gene`` is not a var name.
    """
    if gene not in adata.var_names:
        raise ObsColumnError(f"{gene!r} is neither an obs column nor a gene of this dataset",
                             "pick an obs column or a gene symbol from var_names")
    column = adata.var_names.get_loc(gene)
    matrix = adata.layers.get(NORM_LAYER, adata.X)
    values = matrix[:, column]
    values = values.toarray() if sparse.issparse(values) else np.asarray(values)
    return values.ravel().astype(np.float64)


def color_values(adata: AnnData, key: str) -> tuple[pd.Series, ColorKind]:
    """Values to colour the cells by: an obs column, else a gene's expression.

    Returns
    -------
    values, kind
        One value per cell (indexed by ``obs_names``); ``'categorical'`` values are strings
        (missing ones are ``'NA'``) with categories kept in their order, ``'numeric'`` are floats.

    Raises
    ------
    ObsColumnError
        ``key`` is neither an obs column nor a gene.
    """
    if key in adata.obs.columns:
        column = adata.obs[key]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            return column.astype(np.float64), "numeric"
        if isinstance(column.dtype, pd.CategoricalDtype):
            order = [str(c) for c in column.cat.categories]
        else:
            order = sorted({str(v) for v in column.dropna()})
        text = column.astype(object).where(column.notna(), "NA").astype(str)
        if text.eq("NA").any() and "NA" not in order:
            order.append("NA")
        return pd.Series(pd.Categorical(text, categories=order), index=adata.obs_names), \
            "categorical"
    return pd.Series(gene_expression(adata, key), index=adata.obs_names), "numeric"
