"""Cell embeddings in which distribution metrics (scFID, MMD, Wasserstein) are computed.

The paper embeds cells with a foundation model (scGPT); any embedding can be used as long as
real and generated cells go through the same one, and results say which it was. An embedding
is fitted once on the *real reference* cells and then applied to both sets:

* :class:`PCAEmbedding` (default): ``sklearn.decomposition.PCA`` fitted on the real cells'
  expression; generated cells are projected after aligning their genes to the reference genes.
* :class:`FunctionEmbedding`: any callable ``AnnData -> (n_cells, dim)`` array, e.g. the
  model's own embeddings ``lambda a: c2s_engine.tasks.embed.embed(a.copy(), model).embeddings``.

Expression read from an AnnData (:func:`cell_matrix`) is, unless a layer is named, the
C2S-convention matrix when the data were prepared (``uns['c2s']['normalization']``), else
``X`` (e.g. cells reconstructed from sentences by :func:`c2s_engine.reverse.reconstruct`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.decomposition import PCA

from c2s_engine.errors import MetricError


def cell_matrix(adata: AnnData, layer: str | None = None):
    """The expression matrix metrics read from ``adata`` (cells x genes, sparse or dense).

    Parameters
    ----------
    adata
        The cells.
    layer
        ``'X'`` or a key of ``adata.layers``; ``None`` means the C2S-convention expression
        recorded by :func:`c2s_engine.pp.prepare` when present, else ``X``.

    Raises
    ------
    MetricError
        ``layer`` is not in ``adata.layers``.
    """
    if layer is None:
        if adata.uns.get("c2s", {}).get("normalization"):
            from c2s_engine.normalization import expression_matrix

            return expression_matrix(adata)
        return adata.X
    if layer == "X":
        return adata.X
    if layer not in adata.layers:
        raise MetricError(f"the data have no layer {layer!r} (layers: {list(adata.layers)})",
                          "pass layer=None for X, or one of the existing layers")
    return adata.layers[layer]


def align_genes(adata: AnnData, genes: Any, layer: str | None = None):
    """``adata``'s expression with columns in the order of ``genes``; absent genes are zero.

    A gene a generated cell does not name is, by the C2S convention, not expressed, so zero is
    its value rather than a missing one.

    Raises
    ------
    MetricError
        Duplicated gene names, or none of ``genes`` in ``adata``.
    """
    if not adata.var_names.is_unique:
        raise MetricError("the gene names (var_names) are not unique",
                          "call adata.var_names_make_unique() first")
    source = adata.var_names.get_indexer(genes)
    found = np.flatnonzero(source >= 0)
    if found.size == 0:
        raise MetricError("none of the reference genes occur in the cells to embed",
                          "use cells measured (or generated) over the same gene symbols")
    # A 0/1 selection matrix does the reindexing for sparse and dense input alike.
    select = sp.csr_matrix((np.ones(found.size), (source[found], found)),
                           shape=(adata.n_vars, len(genes)))
    matrix = cell_matrix(adata, layer)
    aligned = matrix @ select
    return aligned.tocsr() if sp.issparse(aligned) else np.asarray(aligned)


@runtime_checkable
class CellEmbedding(Protocol):
    """What the distribution metrics need from an embedding.

    ``fit`` is called once with the real reference cells, then ``transform`` with real and
    with generated cells; ``describe`` is stored with every result.
    """

    def fit(self, reference: AnnData) -> CellEmbedding: ...

    def transform(self, adata: AnnData) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class PCAEmbedding:
    """PCA of expression, fitted on the real reference cells (the default scFID embedding).

    Parameters
    ----------
    n_components
        Wanted dimensions; at most ``min(n_reference_cells, n_genes) - 1`` are used (the fitted
        number is recorded).
    layer
        Matrix to read (see :func:`cell_matrix`), for both real and generated cells.
    seed
        ``random_state`` of the PCA solver.
    """

    name = "pca"

    def __init__(self, n_components: int = 50, *, layer: str | None = None, seed: int = 0):
        if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer) \
                or n_components < 1:
            raise MetricError(f"n_components must be a whole number >= 1, got {n_components!r}",
                              "pass e.g. n_components=50")
        self.n_components = int(n_components)
        self.layer = layer
        self.seed = int(seed)
        self.genes: np.ndarray | None = None
        self.pca: PCA | None = None

    def fit(self, reference: AnnData) -> PCAEmbedding:
        """Fit the PCA on ``reference`` (its genes become the embedding's genes)."""
        n_dims = min(reference.n_obs, reference.n_vars) - 1
        if n_dims < 1:
            raise MetricError(
                f"a PCA needs at least 2 reference cells and 2 genes, got {reference.n_obs} "
                f"cells x {reference.n_vars} genes", "use more real reference cells")
        self.genes = np.asarray(reference.var_names, dtype=str)
        matrix = align_genes(reference, self.genes, self.layer)
        # arpack handles sparse input without densifying and wants fewer dims than min(shape).
        self.pca = PCA(n_components=min(self.n_components, n_dims), svd_solver="arpack",
                       random_state=self.seed).fit(matrix)
        return self

    def transform(self, adata: AnnData) -> np.ndarray:
        """Project ``adata``'s cells (genes aligned to the reference) onto the fitted PCs."""
        if self.pca is None:
            raise MetricError("the PCA embedding has not been fitted",
                              "call fit(reference) with the real cells first")
        return self.pca.transform(align_genes(adata, self.genes, self.layer)).astype(np.float64)

    def describe(self) -> dict[str, Any]:
        """``{'name': 'pca', 'params': {...}}`` with plain values (h5ad-safe)."""
        params: dict[str, Any] = {"n_components_requested": self.n_components,
                                  "layer": self.layer or "", "seed": self.seed,
                                  "fitted_on": "real reference cells"}
        if self.pca is not None:
            params.update(n_components=int(self.pca.n_components_),
                          n_reference_cells=int(self.pca.n_samples_),
                          n_genes=int(self.pca.n_features_in_),
                          explained_variance=float(self.pca.explained_variance_ratio_.sum()))
        return {"name": self.name, "params": params}


class FunctionEmbedding:
    """Any embedding given as a callable, e.g. the model's own cell embeddings.

    Parameters
    ----------
    function
        ``AnnData -> (n_cells, dim)`` array, applied to real and to generated cells alike.
    name
        Recorded with results, e.g. ``'c2s-model:demo:layer-1'``.
    params
        Recorded with results (plain str/int/float/bool values).
    """

    def __init__(self, function: Callable[[AnnData], Any], name: str,
                 params: Mapping[str, Any] | None = None):
        self.function = function
        self.name = name
        self.params = dict(params or {})

    def fit(self, reference: AnnData) -> FunctionEmbedding:
        """Nothing to fit: the callable is fixed."""
        return self

    def transform(self, adata: AnnData) -> np.ndarray:
        """The callable's embedding of ``adata``, checked to be one finite row per cell."""
        values = np.asarray(self.function(adata), dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != adata.n_obs:
            raise MetricError(
                f"the embedding {self.name!r} returned shape {values.shape} for "
                f"{adata.n_obs} cells", "return a (n_cells, dim) array, one row per cell")
        if not np.isfinite(values).all():
            raise MetricError(f"the embedding {self.name!r} returned NaN or infinite values",
                              "check the embedding function on these cells")
        return values

    def describe(self) -> dict[str, Any]:
        """``{'name': name, 'params': params}``."""
        return {"name": self.name, "params": dict(self.params)}
