"""Leiden clustering for the per-cluster tasks (c2s_engine.clustering)."""

from __future__ import annotations

import importlib.util

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from c2s_engine.clustering import compute_leiden, ensure_neighbors
from c2s_engine.errors import EmptyDataError, MissingDependencyError, TaskOptionError
from c2s_engine.validation import prepare

GENES = ["CD3E", "CD3D", "IL7R", "CCR7", "MS4A1", "CD79A", "CD74", "HLA-DRA", "LYZ", "S100A9",
         "S100A8", "CD14", "NKG7", "GNLY", "PPBP", "PF4", "FTL", "ACTB"]


def _three_groups(n_per_group: int = 20) -> ad.AnnData:
    """Counts of three groups of cells, each expressing only its own block of six genes."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.2, size=(3 * n_per_group, len(GENES))).astype(np.float32)
    for group in range(3):
        rows = slice(group * n_per_group, (group + 1) * n_per_group)
        counts[rows, group * 6:(group + 1) * 6] += rng.poisson(30, size=(n_per_group, 6))
    obs = pd.DataFrame({"truth": np.repeat(["a", "b", "c"], n_per_group)},
                       index=[f"cell{i}" for i in range(3 * n_per_group)])
    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=GENES))
    prepare(adata, organism="Homo sapiens")
    return adata


def test_leiden_finds_separated_groups_and_builds_the_missing_graph(tmp_path):
    adata = _three_groups()
    x_before = adata.X.copy()
    n_clusters = compute_leiden(adata, 0.5, n_neighbors=10)
    assert n_clusters == 3
    # Every group is exactly one cluster.
    table = pd.crosstab(adata.obs["truth"], adata.obs["leiden"])
    assert (table > 0).sum(axis=1).tolist() == [1, 1, 1]
    assert sorted(table.max(axis=1)) == [20, 20, 20]
    assert list(adata.obs["leiden"].cat.categories) == ["0", "1", "2"]
    assert adata.uns["c2s"]["clustering"] == {
        "method": "leiden", "flavor": "igraph", "resolution": 0.5, "key_added": "leiden",
        "n_clusters": 3, "seed": 0, "graph": "layers/c2s_norm"}
    assert "connectivities" in adata.obsp and adata.obsm["X_pca"].shape[0] == 60
    assert (x_before != adata.X).nnz == 0  # the graph is built from the C2S layer
    adata.write_h5ad(tmp_path / "clustered.h5ad")
    back = ad.read_h5ad(tmp_path / "clustered.h5ad")
    assert back.uns["c2s"]["clustering"]["n_clusters"] == 3
    assert back.obs["leiden"].tolist() == adata.obs["leiden"].tolist()


def test_an_existing_graph_is_used_and_resolution_changes_the_clusters(pbmc68k_copy):
    adata = pbmc68k_copy
    graph = adata.obsp["connectivities"].copy()
    coarse = compute_leiden(adata, 0.3, key_added="coarse")
    fine = compute_leiden(adata, 2.0, key_added="fine")
    assert coarse < fine
    assert adata.obs["coarse"].nunique() == coarse and adata.obs["fine"].nunique() == fine
    assert adata.uns["c2s"]["clustering"]["graph"] == "existing"
    assert adata.uns["c2s"]["clustering"]["key_added"] == "fine"
    assert (adata.obsp["connectivities"] != graph).nnz == 0
    again = pbmc68k_copy.copy()
    compute_leiden(again, 2.0, key_added="fine")
    assert again.obs["fine"].tolist() == adata.obs["fine"].tolist()  # seeded


def test_ensure_neighbors_reuses_a_pca():
    adata = _three_groups()
    adata.obsm["X_pca"] = np.asarray(adata.layers["c2s_norm"].todense())[:, :4]
    assert ensure_neighbors(adata, n_neighbors=5) == "obsm/X_pca"
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 5
    assert ensure_neighbors(adata) == "existing"


@pytest.mark.parametrize("resolution", [0, -1.0])
def test_resolution_must_be_positive(resolution):
    with pytest.raises(TaskOptionError) as info:
        compute_leiden(_three_groups(), resolution)
    assert str(info.value) == (f"the Leiden resolution must be above 0, got {resolution}. "
                               "Fix: use e.g. 1.0 (higher gives more clusters).")


def test_too_few_cells_and_missing_igraph_are_explained(monkeypatch):
    with pytest.raises(EmptyDataError, match="needs at least 3 cells, the data has 2"):
        compute_leiden(_three_groups()[:2].copy())
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "igraph" else real_find_spec(name, *a))
    adata = _three_groups()
    with pytest.raises(MissingDependencyError) as info:
        compute_leiden(adata)
    assert str(info.value) == (
        "Leiden clustering needs the igraph package, which is not installed. Fix: run `pip "
        "install igraph` in the environment of C2S Studio, or choose an existing cluster column.")
    assert "leiden" not in adata.obs and "neighbors" not in adata.uns
