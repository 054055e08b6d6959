"""Clusters of cells for the tasks that work per cluster (captions, questions about a cluster).

Leiden clustering is scanpy's (``sc.tl.leiden`` with the igraph backend, scanpy's announced
future default, which needs the ``igraph`` package but not ``leidenalg``). It runs on the
data's neighbour graph; when there is none, one is built from a PCA of the C2S-normalised
expression (``layers['c2s_norm']``), so ``X`` is never changed.
"""

from __future__ import annotations

import importlib.util

from anndata import AnnData

from c2s_engine.errors import EmptyDataError, MissingDependencyError, TaskOptionError

CLUSTERING_KEY = "clustering"
NORM_LAYER = "c2s_norm"


def ensure_neighbors(adata: AnnData, *, n_pcs: int = 50, n_neighbors: int = 15,
                     seed: int = 0) -> str:
    """Make sure the data has a neighbour graph, computing it with scanpy when missing.

    Parameters
    ----------
    adata
        Prepared data; modified in place only when it has no graph.
    n_pcs
        Principal components the graph is built from (fewer when the data is smaller).
    n_neighbors
        Neighbours per cell.
    seed
        Random state of the PCA and the graph.

    Returns
    -------
    str
        Where the graph came from: ``'existing'``, ``'obsm/X_pca'`` or the matrix the PCA was
        computed from (``'layers/c2s_norm'`` or ``'X'``).

    Writes
    ------
    When missing: ``obsm['X_pca']``, ``uns['pca']``, ``uns['neighbors']``,
    ``obsp['distances']`` and ``obsp['connectivities']``.
    """
    import scanpy as sc

    if "neighbors" in adata.uns and "connectivities" in adata.obsp:
        return "existing"
    if "X_pca" in adata.obsm:
        n_pcs = min(n_pcs, adata.obsm["X_pca"].shape[1])
        source = "obsm/X_pca"
    else:
        layer = NORM_LAYER if NORM_LAYER in adata.layers else None
        n_pcs = max(1, min(n_pcs, adata.n_obs - 1, adata.n_vars - 1))
        sc.pp.pca(adata, n_comps=n_pcs, layer=layer, random_state=seed)
        source = f"layers/{layer}" if layer else "X"
    sc.pp.neighbors(adata, n_neighbors=min(n_neighbors, adata.n_obs - 1), n_pcs=n_pcs,
                    use_rep="X_pca", random_state=seed)
    return source


def compute_leiden(adata: AnnData, resolution: float = 1.0, *, key_added: str = "leiden",
                   seed: int = 0, n_neighbors: int = 15, n_pcs: int = 50) -> int:
    """Cluster the cells with Leiden (scanpy, igraph backend).

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    resolution
        Higher values give more, smaller clusters (scanpy's default is 1).
    key_added
        obs column of the clusters (overwritten when it exists).
    seed
        Random state of the clustering (and of the graph when it is built here).
    n_neighbors, n_pcs
        Used only to build a neighbour graph when the data has none (:func:`ensure_neighbors`).

    Returns
    -------
    int
        The number of clusters found.

    Writes
    ------
    ``adata.obs[key_added]``
        Categorical cluster names ``'0'``, ``'1'``, ...
    ``adata.uns['c2s']['clustering']``
        ``{method ('leiden'), flavor ('igraph'), resolution, key_added, n_clusters, seed,
        graph}`` where ``graph`` says where the neighbour graph came from.
    Also what :func:`ensure_neighbors` writes when the data had no graph.

    Raises
    ------
    TaskOptionError
        ``resolution`` is not positive.
    EmptyDataError
        Fewer than 3 cells (a neighbour graph needs at least 2 neighbours per cell).
    MissingDependencyError
        The ``igraph`` package is not installed.
    """
    import scanpy as sc

    if not resolution > 0:
        raise TaskOptionError(f"the Leiden resolution must be above 0, got {resolution}",
                              "use e.g. 1.0 (higher gives more clusters)")
    if adata.n_obs < 3:
        raise EmptyDataError(f"Leiden clustering needs at least 3 cells, the data has "
                             f"{adata.n_obs}", "cluster a dataset with more cells")
    if importlib.util.find_spec("igraph") is None:
        raise MissingDependencyError("Leiden clustering needs the igraph package, which is not "
                                     "installed", "run `pip install igraph` in the environment "
                                     "of C2S Studio, or choose an existing cluster column")
    graph = ensure_neighbors(adata, n_pcs=n_pcs, n_neighbors=n_neighbors, seed=seed)
    sc.tl.leiden(adata, resolution=resolution, key_added=key_added, random_state=seed,
                 flavor="igraph", n_iterations=2, directed=False)
    n_clusters = int(adata.obs[key_added].nunique())
    adata.uns.setdefault("c2s", {})[CLUSTERING_KEY] = {
        "method": "leiden", "flavor": "igraph", "resolution": float(resolution),
        "key_added": key_added, "n_clusters": n_clusters, "seed": int(seed), "graph": graph,
    }
    return n_clusters
