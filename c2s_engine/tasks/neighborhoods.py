"""Spatial neighbourhoods as pure geometry: coordinates, neighbour graphs and the
positive/negative cell sets of the same-neighbourhood task (C2S-Scale paper, section 4.6.7).

Nothing here calls a model; :mod:`c2s_engine.tasks.spatial` builds prompts on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.neighbors import kneighbors_graph, radius_neighbors_graph

from c2s_engine.errors import SpatialDataError, TaskOptionError
from c2s_engine.sentences import _cell_positions

CONNECTIVITIES_KEY = "c2s_spatial_connectivities"
DEFAULT_N_NEIGHBORS = 6  # squidpy's default for generic (non-grid) coordinates


def cell_positions(adata: AnnData, cells: Any = None) -> np.ndarray:
    """Integer positions of ``cells``: obs names, integer positions, a boolean mask or None (all)."""
    if cells is None:
        return np.arange(adata.n_obs)
    return np.asarray(_cell_positions(adata, cells), dtype=np.int64)


def spatial_coordinates(adata: AnnData, key: str = "spatial") -> np.ndarray:
    """The ``obsm[key]`` coordinates as a float64 ``(n_cells, 2 or 3)`` array, validated.

    Raises
    ------
    SpatialDataError
        Missing key, wrong shape or non-finite values.
    """
    how = (f"put the coordinates in adata.obsm[{key!r}] as an n_cells x 2 array of x, y "
           "positions (squidpy and Visium readers do this; for a loom file, stack its X and Y "
           "column attributes), or name the obsm key that holds them with key=")
    if key not in adata.obsm:
        found = ", ".join(adata.obsm.keys()) or "none"
        raise SpatialDataError(
            f"the data has no spatial coordinates: adata.obsm[{key!r}] is missing "
            f"(obsm keys: {found})", how)
    coords = np.asarray(adata.obsm[key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise SpatialDataError(
            f"adata.obsm[{key!r}] has shape {coords.shape}, not n_cells x 2 (or 3)", how)
    if not np.isfinite(coords).all():
        n_bad = int((~np.isfinite(coords)).any(axis=1).sum())
        raise SpatialDataError(
            f"{n_bad} cells have NaN or infinite coordinates in adata.obsm[{key!r}]",
            "drop those cells (e.g. adata = adata[np.isfinite(adata.obsm['spatial']).all(1)]) "
            "before building neighbourhoods")
    return coords


def neighbor_graph(coords: np.ndarray, *, radius: float | None = None,
                   n_neighbors: int | None = None) -> sp.csr_matrix:
    """Binary neighbour graph of points: row ``i`` marks the neighbours of point ``i``.

    With ``radius`` every point at Euclidean distance ``<= radius`` is a neighbour (the graph
    is symmetric); with ``n_neighbors`` the ``k`` nearest points are (not symmetric: each
    row has exactly ``k`` entries). A point is never its own neighbour.

    Raises
    ------
    TaskOptionError
        Both or neither of radius/n_neighbors, a radius <= 0, or k outside 1..n_points-1.
    """
    if (radius is None) == (n_neighbors is None):
        raise TaskOptionError("give either a radius or a number of neighbours, not both",
                              "pass radius=... (coordinate units) or n_neighbors=...")
    n = coords.shape[0]
    if radius is not None:
        if not radius > 0:
            raise TaskOptionError(f"radius must be positive, got {radius}",
                                  "pass a radius in the units of the coordinates, e.g. 300")
        graph = radius_neighbors_graph(coords, radius, mode="connectivity", include_self=False)
    else:
        if isinstance(n_neighbors, bool) or not 1 <= int(n_neighbors) < n:
            raise TaskOptionError(
                f"n_neighbors must be between 1 and {n - 1} (cells - 1), got {n_neighbors}",
                "pass a smaller n_neighbors or use more cells")
        graph = kneighbors_graph(coords, int(n_neighbors), mode="connectivity",
                                 include_self=False)
    graph = sp.csr_matrix(graph, dtype=np.float32)
    graph.sort_indices()
    return graph


def stored_graph(adata: AnnData) -> sp.csr_matrix:
    """``adata.obsp['c2s_spatial_connectivities']`` as CSR, or a clear error when absent."""
    if CONNECTIVITIES_KEY not in adata.obsp:
        raise SpatialDataError(
            f"no spatial neighbour graph in adata.obsp[{CONNECTIVITIES_KEY!r}]",
            "run c2s_engine.tasks.spatial.spatial_neighbors(adata, radius=...) first "
            "(CLI: c2s spatial --radius R or --k K)")
    return sp.csr_matrix(adata.obsp[CONNECTIVITIES_KEY])


def neighbors_of(graph: sp.csr_matrix, cell: int) -> np.ndarray:
    """Positions of the neighbours of ``cell`` (row ``cell`` of the graph), ascending."""
    return graph.indices[graph.indptr[cell]:graph.indptr[cell + 1]].astype(np.int64)


@dataclass(frozen=True)
class NeighborhoodSet:
    """The cells of one same-neighbourhood question.

    Attributes
    ----------
    center
        Position of the sampled central cell.
    members
        Positions of every cell in the question (the center included), in prompt order.
    same
        True for a positive set (the center and its neighbours), False for a negative one
        (the center and as many cells outside its neighbourhood).
    """

    center: int
    members: tuple[int, ...]
    same: bool


def neighborhood_sets(graph: sp.csr_matrix, *, n_pairs: int, max_cells: int,
                      rng: np.random.Generator, candidates: np.ndarray | None = None
                      ) -> list[NeighborhoodSet]:
    """Positive and negative cell sets as in the C2S-Scale paper (section 4.6.7).

    ``n_pairs`` centers are drawn without replacement among ``candidates`` (default: all
    cells) that have at least one neighbour. Each gives a positive set, the center and its
    neighbours (a random ``max_cells - 1`` of them when it has more), and a negative set, the
    center and the same number of random cells that are neither the center nor its
    neighbours. The order of cells inside each set is shuffled, so the center's place gives
    nothing away. Sets come in pairs: positive then negative of the same center.

    Raises
    ------
    SpatialDataError
        No candidate has a neighbour, or too few cells for a negative set.
    TaskOptionError
        ``max_cells < 2``.
    """
    if max_cells < 2:
        raise TaskOptionError(f"max_cells must be at least 2, got {max_cells}",
                              "a neighbourhood question needs the center and one more cell")
    n = graph.shape[0]
    pool = np.arange(n) if candidates is None else np.asarray(candidates, dtype=np.int64)
    degree = np.diff(graph.indptr)
    pool = pool[degree[pool] > 0]
    if pool.size == 0:
        raise SpatialDataError(
            "no selected cell has a spatial neighbour, so no positive set can be built",
            "use a larger radius or n_neighbors in spatial_neighbors")
    centers = rng.choice(pool, size=min(n_pairs, pool.size), replace=False)
    sets: list[NeighborhoodSet] = []
    for center in centers.tolist():
        near = neighbors_of(graph, center)
        if near.size > max_cells - 1:
            near = rng.choice(near, size=max_cells - 1, replace=False)
        outside = np.setdiff1d(np.arange(n), np.append(neighbors_of(graph, center), center))
        if outside.size < near.size:
            raise SpatialDataError(
                f"cell {center} has {near.size} neighbours but only {outside.size} cells lie "
                "outside its neighbourhood, too few for a negative set",
                "use a smaller radius or n_neighbors, or more cells")
        far = rng.choice(outside, size=near.size, replace=False)
        for others, same in ((near, True), (far, False)):
            members = np.append(others, center)
            rng.shuffle(members)
            sets.append(NeighborhoodSet(int(center), tuple(int(m) for m in members), same))
    return sets
