"""What the text tasks (captions, summaries, questions) know about a dataset.

Facts are computed with scanpy on the C2S-normalised matrix: cluster sizes, marker genes
from ``sc.tl.rank_genes_groups`` and the most expressed genes. The text tasks also share
how cells are chosen for a prompt (seeded, stratified by cluster) and how their sentences
are packed into the model's context window; both live here so the three tasks choose and
pack cells the same way.

Marker genes are cached in ``adata.uns['c2s']['markers']`` together with a signature of
the grouping, so asking several questions does not rerun the test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import (
    ContextBudgetError,
    GroupingError,
    ObsColumnError,
    TaskOptionError,
)
from c2s_engine.packing import PackedPrompt, pack_cells, pack_genes
from c2s_engine.prompts import PromptTemplate

MARKER_METHODS = ("wilcoxon", "t-test")
MARKERS_KEY = "markers"
# rank_genes_groups cannot test a group of one cell (it divides by the group's variance).
MIN_CELLS_FOR_MARKERS = 2


@dataclass
class ClusterFacts:
    """One cluster: its name, size and marker genes (best first; empty when not testable)."""

    name: str
    n_cells: int
    markers: list[str] = field(default_factory=list)


@dataclass
class DatasetFacts:
    """Facts about a dataset, computed with scanpy, for prompts and for the UI to cite.

    Attributes
    ----------
    n_cells, n_genes
        Shape of the data.
    organism
        ``'Homo sapiens'``, ``'Mus musculus'`` or ``'unknown'``.
    groupby
        obs column of the clusters ('' when none was given).
    clusters
        Every non-empty cluster, largest first (ties in name order).
    top_expressed
        Genes with the highest mean C2S expression over all cells.
    marker_method
        rank_genes_groups method of the markers ('' without clusters).
    untested
        Clusters whose markers could not be computed (fewer than 2 cells, or the only cluster).
    """

    n_cells: int
    n_genes: int
    organism: str
    groupby: str = ""
    clusters: list[ClusterFacts] = field(default_factory=list)
    top_expressed: list[str] = field(default_factory=list)
    marker_method: str = ""
    untested: list[str] = field(default_factory=list)

    def cluster(self, name: str) -> ClusterFacts:
        """The facts of cluster ``name``.

        Raises
        ------
        GroupingError
            When there is no such cluster (the message lists the clusters).
        """
        for found in self.clusters:
            if found.name == name:
                return found
        raise unknown_cluster_error(name, self.groupby, [c.name for c in self.clusters])

    def to_text(self, focus: str | None = None, max_clusters: int | None = None) -> str:
        """The facts as one paragraph for a prompt's context.

        ``focus`` names a cluster the question is about; its line comes first.
        ``max_clusters`` lists only the largest clusters (the others are counted).
        """
        organism = self.organism if self.organism != "unknown" else "unknown organism"
        parts = [f"{self.n_cells} cells, {self.n_genes} genes, {organism}."]
        if self.top_expressed:
            parts.append(f"Most expressed genes: {', '.join(self.top_expressed)}.")
        if focus is not None:
            chosen = self.cluster(focus)
            parts.append(f"The question is about cluster {chosen.name} of {self.groupby} "
                         f"({_cluster_words(chosen)}).")
        if self.clusters:
            shown = self.clusters[:max_clusters]
            listed = "; ".join(f"{c.name} ({_cluster_words(c)})" for c in shown)
            rest = self.clusters[len(shown):]
            if rest:
                n_rest = sum(c.n_cells for c in rest)
                listed += f"; and {len(rest)} smaller clusters ({n_rest} cells)"
            parts.append(f"{len(self.clusters)} clusters by {self.groupby}: {listed}.")
        return " ".join(parts)


def _cluster_words(cluster: ClusterFacts) -> str:
    size = f"{cluster.n_cells} cell{'s' if cluster.n_cells != 1 else ''}"
    return f"{size}; markers {', '.join(cluster.markers)}" if cluster.markers else size


def _str_array(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def unknown_cluster_error(name: Any, groupby: str, clusters: Sequence[str]) -> GroupingError:
    """The error for a cluster name that ``groupby`` does not have (listing the ones it has)."""
    shown = ", ".join(repr(c) for c in clusters[:30]) + (" ..." if len(clusters) > 30 else "")
    return GroupingError(f"{groupby} has no cluster {str(name)!r}; its clusters are {shown}",
                         "pass one of these names")


def group_labels(adata: AnnData, groupby: str) -> pd.Series:
    """``adata.obs[groupby]`` as strings (missing values stay missing).

    Raises
    ------
    ObsColumnError
        When the column does not exist or holds no value.
    """
    if groupby not in adata.obs.columns:
        columns = ", ".join(map(str, adata.obs.columns[:30])) or "none"
        raise ObsColumnError(f"the groupby column {groupby!r} is not in adata.obs (columns: "
                             f"{columns})", "pass groupby= one of these columns, e.g. a cluster "
                             "or cell-type column")
    labels = adata.obs[groupby]
    if labels.isna().all():
        raise ObsColumnError(f"the groupby column {groupby!r} has no values",
                             "choose a column that holds a cluster for the cells")
    return labels.astype(object).map(str, na_action="ignore")


def cluster_sizes(adata: AnnData, groupby: str) -> pd.Series:
    """Cells per cluster (largest first, ties in name order); empty clusters are left out."""
    counts = group_labels(adata, groupby).value_counts(dropna=True)
    order = sorted(counts.index, key=lambda name: (-int(counts[name]), name))
    return counts[order].astype(int)


def _signature(adata: AnnData, groupby: str) -> str:
    """Changes when the cells, genes or grouping change, so cached markers are recomputed."""
    hashed = pd.util.hash_pandas_object(group_labels(adata, groupby).fillna("\0"), index=True)
    genes = pd.util.hash_pandas_object(pd.Series(adata.var_names), index=False)
    matrix = str(adata.uns.get("c2s", {}).get("normalization", {}).get("matrix", ""))
    return f"{int(hashed.sum()) & 0xFFFFFFFFFFFF:x}-{int(genes.sum()) & 0xFFFFFFFFFFFF:x}-{matrix}"


def _rank_genes_groups(adata: AnnData, labels: pd.Series, groups: list[str], method: str,
                       n_genes: int) -> dict[str, list[str]]:
    import scanpy as sc

    from c2s_engine.normalization import expression_matrix

    # A throwaway AnnData: the user's own uns['rank_genes_groups'] is never overwritten.
    work = AnnData(X=expression_matrix(adata), obs=pd.DataFrame(
        {"group": pd.Categorical(labels.to_numpy())}, index=adata.obs_names),
        var=pd.DataFrame(index=adata.var_names))
    work.uns["log1p"] = {"base": 10}  # the C2S convention is log10(1 + x)
    sc.tl.rank_genes_groups(work, "group", groups=groups, reference="rest", method=method,
                            n_genes=n_genes, use_raw=False)
    table = sc.get.rank_genes_groups_df(work, group=None)
    # A gene scoring below the rest is not a marker of the group, however high it ranks.
    table = table[table["scores"] > 0]
    if len(groups) == 1:  # rank_genes_groups_df leaves out the group column for one group
        return {groups[0]: [str(g) for g in table["names"]]}
    return {g: [str(n) for n in table.loc[table["group"] == g, "names"]] for g in groups}


def marker_genes(adata: AnnData, groupby: str, *, n_genes: int = 10, method: str = "wilcoxon"
                 ) -> dict[str, list[str]]:
    """Top marker genes of every cluster (each cluster against the rest), best first.

    Computed with ``sc.tl.rank_genes_groups`` on the C2S-normalised matrix and cached;
    genes whose score is not positive are not markers. Clusters with fewer than 2 cells
    (and the only cluster of a one-cluster grouping) get no markers.

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    groupby
        obs column of the clusters.
    n_genes
        Markers kept per cluster.
    method
        ``'wilcoxon'`` or ``'t-test'``.

    Writes
    ------
    ``adata.uns['c2s']['markers']``
        ``{groupby, method, n_genes, signature, clusters (str array), tested (bool array),
        genes (clusters x n_genes str array, '' padded)}``; reused while groupby, method,
        cells and genes are unchanged and ``n_genes`` is not larger.
    """
    return _cached_markers(adata, groupby, n_genes, method)[0]


def _cached_markers(adata: AnnData, groupby: str, n_genes: int, method: str
                    ) -> tuple[dict[str, list[str]], set[str]]:
    """(markers per cluster, clusters that could be tested), from the cache when valid."""
    if method not in MARKER_METHODS:
        raise TaskOptionError(f"unknown marker method {method!r}",
                              f"use one of {', '.join(MARKER_METHODS)}")
    if n_genes < 1:
        raise TaskOptionError(f"n_genes must be at least 1, got {n_genes}", "pass e.g. 5")
    signature = _signature(adata, groupby)
    cached = adata.uns.get("c2s", {}).get(MARKERS_KEY, {})
    if (cached.get("groupby") == groupby and cached.get("method") == method
            and cached.get("signature") == signature and int(cached.get("n_genes", 0)) >= n_genes):
        names = [str(c) for c in cached["clusters"]]
        table = np.asarray(cached["genes"], dtype=object).reshape(len(names), -1)
        markers = {c: [str(g) for g in row[:n_genes] if g]
                   for c, row in zip(names, table, strict=True)}
        tested = {c for c, ok in zip(names, np.asarray(cached["tested"]), strict=True) if ok}
        return markers, tested

    sizes = cluster_sizes(adata, groupby)
    testable = [str(c) for c in sizes.index if sizes[c] >= MIN_CELLS_FOR_MARKERS]
    # Against "rest" needs a rest: one cluster holding every cell has nothing to differ from.
    if len(testable) == 1 and int(sizes.sum()) == sizes[testable[0]]:
        testable = []
    found = (_rank_genes_groups(adata, group_labels(adata, groupby), testable, method, n_genes)
             if testable else {})
    markers = {str(c): found.get(str(c), []) for c in sizes.index}
    table = np.full((len(markers), n_genes), "", dtype=object)
    for row, genes in enumerate(markers.values()):
        table[row, :len(genes)] = genes
    adata.uns.setdefault("c2s", {})[MARKERS_KEY] = {
        "groupby": groupby, "method": method, "n_genes": int(n_genes), "signature": signature,
        "clusters": _str_array(list(markers)),
        "tested": np.array([c in testable for c in markers], dtype=bool), "genes": table,
    }
    return markers, set(testable)


def top_expressed_genes(adata: AnnData, n_genes: int = 10) -> list[str]:
    """Genes with the highest mean C2S expression over all cells (ties in var order)."""
    from c2s_engine.normalization import expression_matrix

    means = np.asarray(expression_matrix(adata).mean(axis=0)).ravel()
    order = np.argsort(-means, kind="stable")[:n_genes]
    return [str(adata.var_names[i]) for i in order if means[i] > 0]


def dataset_facts(adata: AnnData, groupby: str | None = None, *, n_markers: int = 5,
                  n_top_expressed: int = 10, method: str = "wilcoxon") -> DatasetFacts:
    """Facts about ``adata`` for prompts: size, organism, top genes, clusters and markers.

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    groupby
        obs column of the clusters; None for facts without clusters.
    n_markers
        Marker genes per cluster (see :func:`marker_genes`, which caches them in ``uns``).
    n_top_expressed
        Most expressed genes over the whole dataset.
    method
        rank_genes_groups method (``'wilcoxon'`` or ``'t-test'``).
    """
    organism = str(adata.uns.get("c2s", {}).get("identifiers", {}).get("organism", "unknown"))
    facts = DatasetFacts(n_cells=int(adata.n_obs), n_genes=int(adata.n_vars), organism=organism,
                         top_expressed=top_expressed_genes(adata, n_top_expressed))
    if groupby is None:
        return facts
    sizes = cluster_sizes(adata, groupby)
    markers, tested = _cached_markers(adata, groupby, n_markers, method)
    facts.groupby, facts.marker_method = groupby, method
    facts.clusters = [ClusterFacts(str(c), int(sizes[c]), markers[str(c)]) for c in sizes.index]
    facts.untested = [c.name for c in facts.clusters if c.name not in tested]
    return facts



def check_n_cells(n_cells: int | None) -> None:
    """Refuse a number of cells below 1 (None means as many as the context holds)."""
    if n_cells is not None and n_cells < 1:
        raise TaskOptionError(f"n_cells must be at least 1, got {n_cells}",
                              "pass n_cells >= 1, or None to fit as many cells as the context holds")


def order_cells(adata: AnnData, *, seed: int, groupby: str | None = None,
                cells: Sequence[int] | np.ndarray | None = None,
                n_cells: int | None = None) -> np.ndarray:
    """Positions of the cells offered to a prompt, in order of preference.

    Cells are shuffled with ``seed``. With ``groupby`` the clusters take turns (largest
    first, each in its own shuffled order), so every prefix of the order, and hence
    whatever the packer keeps, is stratified by cluster. Cells with no cluster come last.

    Parameters
    ----------
    cells
        Positions to choose from (default: every cell).
    n_cells
        Keep at most this many (None: all).
    """
    check_n_cells(n_cells)
    pool = np.arange(adata.n_obs) if cells is None else np.asarray(cells, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = pool[rng.permutation(len(pool))]
    if groupby is not None:
        labels = group_labels(adata, groupby).to_numpy()[order]
        sizes = cluster_sizes(adata, groupby)
        rank_of_cluster = {name: i for i, name in enumerate(sizes.index)}
        cluster = np.array([rank_of_cluster.get(v, len(sizes)) if isinstance(v, str)
                            else len(sizes) for v in labels])
        turn = pd.Series(cluster).groupby(cluster).cumcount().to_numpy()
        turn[cluster == len(sizes)] = len(order)  # unlabelled cells after every turn
        order = order[np.lexsort((cluster, turn))]
    return order if n_cells is None else order[:n_cells]


@dataclass
class CellContext:
    """Cells packed into a prompt, and what the UI needs to cite them.

    Attributes
    ----------
    packed
        The packed prompt (``text``, ``n_tokens <= budget``, ...).
    cells
        obs names of the cells in the prompt, in prompt order.
    sentences
        Their sentences as they appear in the prompt.
    """

    packed: PackedPrompt
    cells: list[str]
    sentences: list[str]

    def shared_genes(self, n_genes: int = 10) -> list[str]:
        """Genes in the most of these cells' sentences (ties: first seen, i.e. higher ranked)."""
        counts = Counter(g for s in self.sentences for g in dict.fromkeys(s.split()))
        return [gene for gene, _ in counts.most_common(n_genes)]


def pack_cell_context(adata: AnnData, positions: np.ndarray, template: PromptTemplate,
                      tokenizer: Any, *, top_k: int, context_length: int, reserve_tokens: int,
                      fields: Mapping[str, Any]) -> CellContext:
    """Pack the sentences of ``positions`` (in order) into ``template`` within the context.

    As many whole cells as fit are kept (:func:`~c2s_engine.packing.pack_cells`); when not
    even one whole cell fits, the first cell is kept with as many of its top genes as fit
    (:func:`~c2s_engine.packing.pack_genes`).

    Raises
    ------
    ContextBudgetError
        When not even one gene of one cell fits next to the template and ``fields``.
    """
    from c2s_engine.tasks.runtime import cell_sentences, require_cells

    # A gene costs at least one token, so no more than a context's worth of cells or of
    # genes can fit: cutting the rest first keeps the packer's binary search cheap.
    positions = np.asarray(positions)[:context_length]
    sentences = cell_sentences(adata, top_k, positions)
    require_cells(sentences, "put in the prompt")
    words = np.cumsum([max(1, len(s.split())) for s in sentences])
    keep = max(1, int(np.searchsorted(words, context_length, side="right")))
    sentences = sentences[:keep]
    options = {"context_length": context_length, "reserve_tokens": reserve_tokens,
               "fields": fields}
    try:
        packed = pack_cells(template, sentences, tokenizer, **options)
    except ContextBudgetError:
        packed = pack_genes(template, sentences[:1], tokenizer, **options)
    used = [" ".join(s.split()[:packed.n_genes_per_cell])
            for s in sentences[:packed.n_cells_used]]
    names = [str(n) for n in adata.obs_names[positions[:packed.n_cells_used]]]
    return CellContext(packed=packed, cells=names, sentences=used)
