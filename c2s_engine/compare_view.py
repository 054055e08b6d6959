"""Groups of cells side by side: one joint map, mean shifts from a reference group, and
gene-program scores.

Made to judge predicted perturbed cells against the control cells they came from and, when the
data has them, the real perturbed cells. Every group's expression is read in the C2S convention
over one gene list (:func:`c2s_engine.metrics.embeddings.align_genes`: prepared data give their
C2S-normalised matrix, cells rebuilt from sentences their ``X``; a gene a group lacks is 0), so
the groups are comparable whatever matrix each came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from c2s_engine.errors import GeneSetFileError, GroupingError
from c2s_engine.metrics.embeddings import align_genes

#: obs column of the joint AnnData naming each cell's group.
GROUP_KEY = "c2s_group"
#: obs column of the joint AnnData holding each cell's obs name in its own group.
CELL_KEY = "c2s_cell"
#: obs column written by :func:`program_scores`.
SCORE_KEY = "c2s_program_score"


def joint_cells(groups: Mapping[str, AnnData], genes: Sequence[str] | None = None) -> AnnData:
    """The cells of several groups in one AnnData over one gene list.

    Parameters
    ----------
    groups
        ``{group name: cells}`` in the order groups should be listed; empty groups are left out.
    genes
        Genes of the result (default: the first group's ``var_names``).

    Returns
    -------
    AnnData
        ``X``: float32 CSR, C2S-convention expression; obs names ``'<group>:<obs name>'``;
        ``obs['c2s_group']`` (categorical, groups in the given order) and ``obs['c2s_cell']``
        (the obs name within its group).

    Raises
    ------
    GroupingError
        Every group is empty.
    """
    kept = {name: cells for name, cells in groups.items() if cells.n_obs > 0}
    if not kept:
        raise GroupingError("every group of cells to compare is empty",
                            "select at least one cell in one group")
    genes = list(genes) if genes is not None else list(next(iter(kept.values())).var_names)
    blocks = [sp.csr_matrix(align_genes(cells, genes), dtype=np.float32)
              for cells in kept.values()]
    names = [str(n) for cells in kept.values() for n in cells.obs_names]
    group = np.repeat(list(kept), [cells.n_obs for cells in kept.values()])
    obs = pd.DataFrame({GROUP_KEY: pd.Categorical(group, categories=list(kept)),
                        CELL_KEY: names},
                       index=[f"{g}:{n}" for g, n in zip(group, names, strict=True)])
    return AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes))


def joint_umap(joint: AnnData, *, n_pcs: int = 30, n_neighbors: int = 15, seed: int = 0) -> None:
    """A PCA and a UMAP computed on all the groups together, so they share one map.

    Writes
    ------
    ``obsm['X_pca']``, ``obsm['X_umap']``, ``uns['neighbors']``, ``obsp['distances']``,
    ``obsp['connectivities']``, and ``uns['c2s']['compare_view']`` =
    ``{groups, n_cells (per group, same order), n_pcs, n_neighbors, seed}``.

    Raises
    ------
    GroupingError
        Fewer than 3 cells (a PCA and a neighbour graph need more).
    """
    import scanpy as sc

    if joint.n_obs < 3:
        raise GroupingError(f"only {joint.n_obs} cells to lay out on a map",
                            "compare at least 3 cells in total")
    n_pcs = max(1, min(n_pcs, joint.n_obs - 1, joint.n_vars - 1))
    sc.pp.pca(joint, n_comps=n_pcs, random_state=seed)
    n_neighbors = max(2, min(n_neighbors, joint.n_obs - 1))
    sc.pp.neighbors(joint, n_neighbors=n_neighbors, n_pcs=n_pcs, use_rep="X_pca",
                    random_state=seed)
    sc.tl.umap(joint, random_state=seed)
    groups = joint.obs[GROUP_KEY]
    joint.uns.setdefault("c2s", {})["compare_view"] = {
        "groups": [str(g) for g in groups.cat.categories],
        "n_cells": [int((groups == g).sum()) for g in groups.cat.categories],
        "n_pcs": int(n_pcs), "n_neighbors": int(n_neighbors), "seed": int(seed)}


def _group_means(joint: AnnData) -> pd.DataFrame:
    groups = joint.obs[GROUP_KEY]
    means = {}
    for name in groups.cat.categories:
        rows = (groups == name).to_numpy()
        if rows.any():
            means[str(name)] = np.asarray(joint.X[rows].mean(axis=0), dtype=np.float64).ravel()
    return pd.DataFrame(means, index=joint.var_names.astype(str))


def mean_shift(joint: AnnData, reference: str) -> pd.DataFrame:
    """Mean expression per group and each group's change from ``reference``, per gene.

    Parameters
    ----------
    joint
        From :func:`joint_cells`.
    reference
        The group the changes are measured from (e.g. ``'control'``).

    Returns
    -------
    pandas.DataFrame
        Index: genes. Columns ``mean <group>`` for every group, then ``change <group>`` =
        ``mean <group> - mean <reference>`` for every other group.

    Raises
    ------
    GroupingError
        ``reference`` is not a group with cells.
    """
    means = _group_means(joint)
    if reference not in means:
        raise GroupingError(f"there are no {reference!r} cells to measure changes from",
                            f"use one of the groups: {', '.join(means.columns)}")
    table = means.add_prefix("mean ")
    for group in means.columns:
        if group != reference:
            table[f"change {group}"] = means[group] - means[reference]
    table.index.name = "gene"
    return table


def top_changes(shift: pd.DataFrame, group: str, n: int = 15) -> tuple[pd.DataFrame,
                                                                        pd.DataFrame]:
    """The ``n`` genes going most up and most down in ``group`` (by ``change <group>``).

    Genes that do not change are in neither table.

    Raises
    ------
    GroupingError
        ``shift`` has no change column for ``group``.
    """
    column = f"change {group}"
    if column not in shift:
        raise GroupingError(f"there are no changes of {group!r} in the table",
                            "measure changes from a reference group that is not this group")
    ordered = shift.sort_values(column, ascending=False, kind="stable")
    up = ordered[ordered[column] > 0].head(n)
    down = ordered[ordered[column] < 0].iloc[::-1].head(n)
    return up, down


def match_genes(program: Sequence[str], var_names: Sequence[str]) -> list[str]:
    """The genes of ``program`` present in ``var_names``, matched ignoring case and spelled
    as in ``var_names`` (so a human list also finds mouse genes, e.g. ``ISG15`` -> ``Isg15``)."""
    spelling = {}
    for name in map(str, var_names):
        spelling.setdefault(name.casefold(), name)
    return list(dict.fromkeys(spelling[g.casefold()] for g in program
                              if g.casefold() in spelling))


def program_scores(joint: AnnData, program: Sequence[str], *, seed: int = 0
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every cell for a gene program and summarise the scores per group.

    The score is scanpy's :func:`scanpy.tl.score_genes`: the cell's mean expression of the
    program's genes minus its mean expression of reference genes drawn from the same expression
    bins, so a score above 0 means the program is up in that cell relative to comparable genes.

    Parameters
    ----------
    joint
        From :func:`joint_cells`.
    program
        Gene symbols (matched to the data ignoring case).
    seed
        Seed of scanpy's draw of reference genes.

    Returns
    -------
    summary, info
        ``summary``: one row per group with cells (``n_cells``), ``mean`` and ``median`` score;
        ``info``: ``{'genes_used': [...], 'n_genes_program': int}``.

    Writes
    ------
    ``joint.obs['c2s_program_score']``.

    Raises
    ------
    GeneSetFileError
        No gene of the program is in the data, or the data has too few other genes to
        compare with.
    """
    import scanpy as sc

    genes = match_genes(program, joint.var_names)
    if not genes:
        shown = ", ".join(list(program)[:5]) + (", ..." if len(program) > 5 else "")
        raise GeneSetFileError(f"none of the program's {len(program)} genes ({shown}) is "
                               "measured in this dataset",
                               "choose a program of genes measured here, or upload a GMT file")
    if joint.n_vars - len(genes) < 1:
        raise GeneSetFileError("the program holds every gene of the dataset, leaving no genes "
                               "to compare with", "choose a smaller gene program")
    n_bins = max(1, min(25, joint.n_vars // 10))
    sc.tl.score_genes(joint, genes, ctrl_size=min(50, joint.n_vars - len(genes)),
                      n_bins=n_bins, score_name=SCORE_KEY, random_state=seed, use_raw=False)
    grouped = joint.obs.groupby(GROUP_KEY, observed=True)[SCORE_KEY]
    summary = pd.DataFrame({"n_cells": grouped.size(), "mean": grouped.mean(),
                            "median": grouped.median()})
    summary.index = pd.Index(summary.index.astype(str), name="group")
    return summary, {"genes_used": genes, "n_genes_program": len(list(program))}


def prediction_metrics(control: AnnData, real: AnnData, predicted: AnnData, *,
                       condition_key: str | Sequence[str] | None = None,
                       n_components: int = 50) -> dict[str, Any]:
    """How close predicted perturbed cells are to real ones, next to how close the controls are.

    The controls' distances to the real perturbed cells are the baseline a useful prediction
    must beat: predicted cells that are no closer than their controls did not move towards the
    perturbed state. Distances are computed by
    :func:`c2s_engine.metrics.compare_distributions` in a PCA fitted on the real perturbed cells.

    Parameters
    ----------
    control, real, predicted
        Control cells, real perturbed cells and predicted perturbed cells.
    condition_key
        obs column(s) splitting the cells into conditions (e.g. the cell type), compared
        separately and averaged; None compares all cells at once.
    n_components
        PCA dimensions (at most the real cells' count minus one).

    Returns
    -------
    dict
        h5ad-safe: ``predicted_vs_real`` and ``control_vs_real``
        (:meth:`~c2s_engine.metrics.DistributionComparison.to_dict`), ``pearson_delta``
        (Pearson r of the real and predicted mean change from control over all genes; NaN when
        a change is flat) and ``condition_key``.

    Raises
    ------
    MetricError
        Too few cells to compare (fewer than 2 in a set) or no shared condition.
    ObsColumnError
        A condition column is missing from one of the sets.
    """
    from c2s_engine.metrics import PCAEmbedding, compare_distributions, pearson_delta

    def compare(other: AnnData) -> dict[str, Any]:
        return compare_distributions(real, other, condition_key=condition_key,
                                     embedding=PCAEmbedding(n_components)).to_dict()

    keys = [condition_key] if isinstance(condition_key, str) else list(condition_key or [])
    return {"predicted_vs_real": compare(predicted), "control_vs_real": compare(control),
            "pearson_delta": pearson_delta(control, real, predicted), "condition_key": keys}
