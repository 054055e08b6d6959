"""Training targets that come from the data when no human-written text exists.

Captions, dataset summaries and question/answer pairs are written from facts computed with
scanpy (:mod:`c2s_engine.tasks.facts`): labels, cluster sizes and composition, and marker genes
from ``rank_genes_groups``. Every such text starts with :data:`DERIVED_PREFIX` so a reader (and a
model) can tell it from human text. Gene sets come from a user GMT file, or are derived from
the marker genes of each cluster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from c2s_engine.errors import GeneSetFileError, MissingFileError
from c2s_engine.tasks.facts import ClusterFacts, DatasetFacts

DERIVED_PREFIX = "Derived from the data:"
# Clusters named in a summary; the rest are counted.
MAX_LISTED = 10

Composition = list[tuple[str, int]]


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets of a GMT file: ``{set name: [genes in file order]}``.

    Each line is ``name<TAB>description<TAB>gene<TAB>gene...``; blank lines are skipped and
    duplicate genes within a set are kept once.

    Raises
    ------
    MissingFileError
        The file does not exist.
    GeneSetFileError
        A line has fewer than three tab-separated fields, a set has no gene, a name repeats,
        or the file holds no set.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"the gene-set file {path} does not exist",
                               "check the gmt_path (a GMT file such as h.all.v7.0.symbols.gmt)")
    sets: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("\t")
            genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
            name = fields[0].strip()
            if len(fields) < 3 or not name or not genes:
                raise GeneSetFileError(
                    f"{path.name} line {number} is not a GMT gene set (name, description and "
                    "at least one gene, separated by tabs)",
                    "fix that line, or export the gene sets as GMT (tab-separated)")
            if name in sets:
                raise GeneSetFileError(f"{path.name} line {number} repeats the gene set {name!r}",
                                       "give every gene set a unique name")
            sets[name] = genes
    if not sets:
        raise GeneSetFileError(f"{path.name} holds no gene set", "pass a non-empty GMT file")
    return sets


def marker_gene_sets(facts: DatasetFacts) -> dict[str, list[str]]:
    """Derived gene sets: the marker genes of every cluster that has some, by cluster."""
    return {marker_set_name(c.name, facts.groupby): list(c.markers)
            for c in facts.clusters if c.markers}


def marker_set_name(cluster: str, groupby: str) -> str:
    """The name of the derived marker gene set of ``cluster``."""
    return f"marker genes of {cluster} ({groupby})"


def composition(values: pd.Series | Sequence[str]) -> Composition:
    """``[(value, count)]``, most frequent first (ties in name order); missing values dropped."""
    counts = pd.Series(values, dtype=object).dropna().astype(str).value_counts()
    return sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0]))


def _percent(count: int, total: int) -> str:
    share = 100.0 * count / total if total else 0.0
    return "<1%" if 0 < share < 0.5 else f"{share:.0f}%"


def _listing(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _shares(parts: Composition, limit: int = MAX_LISTED) -> str:
    total = sum(n for _, n in parts)
    shown = [f"{name} ({_percent(n, total)})" for name, n in parts[:limit]]
    if len(parts) > limit:
        shown.append(f"{len(parts) - limit} smaller groups")
    return _listing(shown)


def _cells(n: int) -> str:
    return f"{n} cell{'s' if n != 1 else ''}"


def cluster_caption(cluster: ClusterFacts, groupby: str,
                    compositions: Sequence[tuple[str, Composition]] = ()) -> str:
    """A derived caption of one cluster: its label, size, marker genes and make-up.

    ``compositions`` are ``(obs column, composition of the cluster's cells)`` pairs, e.g. the
    cluster's conditions, each described as shares.

    Example: ``"Derived from the data: this cluster of 81 cells is labelled CD14+ Monocyte in
    bulk_labels; its top marker genes are FTL, AIF1 and PSAP."``
    """
    text = (f"{DERIVED_PREFIX} this cluster of {_cells(cluster.n_cells)} is labelled "
            f"{cluster.name} in {groupby}")
    text += (f"; its top marker genes are {_listing(cluster.markers)}." if cluster.markers
             else "; no marker genes could be computed for it.")
    for column, parts in compositions:
        if parts:
            text += f" By {column}, its cells are {_shares(parts)}."
    return text


def dataset_summary(facts: DatasetFacts, *, tissue: str = "",
                    compositions: Sequence[tuple[str, Composition]] = ()) -> str:
    """A derived, abstract-style summary of a dataset: size, organism, groups, top genes.

    Example: ``"Derived from the data: a single-cell dataset of 700 Homo sapiens cells and 765
    genes. By bulk_labels, its cells are Dendritic (34%), ...; the most expressed genes are
    FTL, CD74 and RPS24."``
    """
    organism = "" if facts.organism == "unknown" else f" {facts.organism}"
    where = f" from {tissue}" if tissue else ""
    text = (f"{DERIVED_PREFIX} a single-cell dataset of {facts.n_cells}{organism} cells{where} "
            f"and {facts.n_genes} genes.")
    if facts.clusters:
        parts = [(c.name, c.n_cells) for c in facts.clusters]
        text += f" By {facts.groupby}, its cells are {_shares(parts)}."
        marked = [c for c in facts.clusters if c.markers][:3]
        if marked:
            text += " Marker genes: " + "; ".join(
                f"{c.name}: {', '.join(c.markers[:3])}" for c in marked) + "."
    for column, parts in compositions:
        if parts:
            text += f" By {column}, its cells are {_shares(parts)}."
    if facts.top_expressed:
        text += f" The most expressed genes are {_listing(facts.top_expressed[:5])}."
    return text


def qa_pairs(facts: DatasetFacts, *, shown_labels: Sequence[str] = (), label_key: str = "",
             compositions: Sequence[tuple[str, Composition]] = ()) -> list[tuple[str, str]]:
    """Every derived ``(question, answer)`` pair the facts support, in a fixed order.

    Questions cover the dataset size, each cluster's size and marker genes, the largest
    cluster, which clusters a marker gene marks, the labels of the cells shown with the
    question (``shown_labels``, in prompt order) and each column of ``compositions``.
    """
    pairs = [("How many cells does the dataset have?",
              f"{DERIVED_PREFIX} the dataset has {facts.n_cells} cells and "
              f"{facts.n_genes} genes.")]
    by = facts.groupby
    if facts.clusters:
        largest = facts.clusters[0]
        pairs.append((f"Which {by} group is the largest?",
                      f"{DERIVED_PREFIX} the largest {by} group is {largest.name} with "
                      f"{_cells(largest.n_cells)} ({_percent(largest.n_cells, facts.n_cells)})."))
    for cluster in facts.clusters:
        pairs.append((f"How many cells are in {by} group {cluster.name}?",
                      f"{DERIVED_PREFIX} {by} group {cluster.name} has "
                      f"{_cells(cluster.n_cells)} "
                      f"({_percent(cluster.n_cells, facts.n_cells)} of the dataset)."))
        if cluster.markers:
            pairs.append((f"What are the marker genes of {cluster.name}?",
                          f"{DERIVED_PREFIX} the top marker genes of {cluster.name} against "
                          f"the other cells are {_listing(cluster.markers)}."))
    marks: dict[str, list[str]] = {}
    for cluster in facts.clusters:
        for gene in cluster.markers[:3]:
            marks.setdefault(gene, []).append(cluster.name)
    for gene, clusters in marks.items():
        pairs.append((f"Which {by} group has {gene} among its top marker genes?",
                      f"{DERIVED_PREFIX} {gene} is a top marker gene of {_listing(clusters)}."))
    if label_key and shown_labels:
        counted = Counter(shown_labels)
        parts = sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))
        pairs.append((f"What {label_key} labels do the cells shown have?",
                      f"{DERIVED_PREFIX} the {_cells(len(shown_labels))} shown are "
                      f"{_listing([f'{n} {name}' for name, n in parts])}."))
    for column, parts in compositions:
        if parts:
            pairs.append((f"How are the cells distributed by {column}?",
                          f"{DERIVED_PREFIX} by {column}, the cells are {_shares(parts)}."))
    return pairs
