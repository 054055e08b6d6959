"""Spatial tasks (C2S-Scale paper, sections 2.5 and 4.6.7): neighbourhoods from coordinates,
niche label prediction, same-neighbourhood prediction and conditional neighbour generation,
each with optional ligand-receptor context (:mod:`c2s_engine.tasks.ligrec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.special import softmax

from c2s_engine.errors import (
    LabelsError,
    ObsColumnError,
    SentenceError,
    SpatialDataError,
    TaskOptionError,
)
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.packing import count_tokens, pack_cells
from c2s_engine.prompts import get_template
from c2s_engine.tasks.label_metrics import classification_metrics
from c2s_engine.tasks.ligrec import LigrecContext, TableLike, genes_of, interaction_block
from c2s_engine.tasks.neighborhoods import (
    CONNECTIVITIES_KEY,
    DEFAULT_N_NEIGHBORS,
    cell_positions,
    neighbor_graph,
    neighborhood_sets,
    neighbors_of,
    spatial_coordinates,
    stored_graph,
)
from c2s_engine.tasks.perturb import (
    answer_tokens,
    default_answer_tokens,
    generate_rounds,
    reconstructed_cells,
    replicate_index,
)
from c2s_engine.tasks.runtime import (
    CacheLike,
    CallStats,
    ModelLike,
    cached_generate,
    cached_scores,
    cell_sentences,
    check_task,
    organism_word,
    provenance,
    record,
    resolve_model,
)

NICHE_TASK = "spatial_niche_label_prediction"
SAME_TASK = "spatial_neighborhood_prediction"
NEIGHBOR_TASK = "spatial_neighbor_generation"
YES, NO = "yes", "no"


@dataclass(frozen=True)
class NeighborSummary:
    """What :func:`spatial_neighbors` built (also stored in ``uns['c2s']['spatial_neighbors']``)."""

    method: str
    radius: float
    n_neighbors: int
    key: str
    mean_neighbors: float
    n_isolated: int

    def to_dict(self) -> dict[str, Any]:
        """h5ad-safe form: only the parameter of the method used is kept."""
        out: dict[str, Any] = {"method": self.method, "key": self.key,
                               "mean_neighbors": self.mean_neighbors,
                               "n_isolated": self.n_isolated}
        if self.method == "radius":
            out["radius"] = self.radius
        else:
            out["n_neighbors"] = self.n_neighbors
        return out


def spatial_neighbors(adata: AnnData, *, radius: float | None = None,
                      n_neighbors: int | None = None, key: str = "spatial") -> NeighborSummary:
    """Spatial neighbourhoods from ``obsm[key]`` coordinates, by radius or k nearest cells.

    Parameters
    ----------
    adata
        AnnData with coordinates in ``obsm[key]`` (n_cells x 2 or 3).
    radius
        Cells at Euclidean distance ``<= radius`` (coordinate units) are neighbours; the
        paper used ~20 micrometres.
    n_neighbors
        The k nearest cells are neighbours. When neither is given, k = 6.
    key
        obsm key of the coordinates.

    Writes
    ------
    ``adata.obsp['c2s_spatial_connectivities']``
        float32 CSR, 1 where column j is a neighbour of row i (never i itself).
    ``adata.uns['c2s']['spatial_neighbors']``
        ``method`` ('radius' or 'knn'), ``radius`` or ``n_neighbors``, ``key``,
        ``mean_neighbors`` and ``n_isolated`` (cells without neighbours).

    Raises
    ------
    SpatialDataError
        Missing or malformed coordinates, or invalid radius/n_neighbors.
    """
    if radius is None and n_neighbors is None:
        n_neighbors = DEFAULT_N_NEIGHBORS
    graph = neighbor_graph(spatial_coordinates(adata, key), radius=radius,
                           n_neighbors=n_neighbors)
    adata.obsp[CONNECTIVITIES_KEY] = graph
    degree = np.diff(graph.indptr)
    summary = NeighborSummary(
        method="radius" if radius is not None else "knn",
        radius=float(radius) if radius is not None else 0.0,
        n_neighbors=int(n_neighbors) if n_neighbors is not None else 0, key=key,
        mean_neighbors=float(degree.mean()) if degree.size else 0.0,
        n_isolated=int((degree == 0).sum()))
    record(adata, "spatial_neighbors", summary.to_dict())
    return summary


# ---------------------------------------------------------------- niche labels

@dataclass
class NicheResult:
    """Niche predictions of :func:`predict_niche` (index: obs names of the predicted cells)."""

    labels: pd.Series
    confidence: pd.Series | None
    metrics: dict[str, Any]
    stats: CallStats
    prompts: list[str] = field(repr=False, default_factory=list)


def predict_niche(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    labels: Sequence[str] | None = None,
    labels_from: str | None = None,
    true_key: str | None = None,
    cells: Any = None,
    top_k: int | None = None,
    key_added: str = "c2s_niche",
    max_new_tokens: int | None = None,
    ligrec: TableLike | None = None,
    ligrec_columns: Sequence[str] | None = None,
    max_interactions: int = 20,
    organism: str | None = None,
    variant: str | int = "canonical",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> NicheResult:
    """Niche label of each cell from its sentence (``spatial_niche_label_prediction``).

    With candidate labels (``labels``, or the values of ``obs[labels_from]``) every label is
    scored by its log-likelihood after the prompt and the best one is taken, with a
    confidence (softmax over the candidates); otherwise the answer is generated as free text.

    Parameters
    ----------
    labels, labels_from
        Candidate niche labels, or an obs column whose values are the candidates (and the
        truth for the metrics unless ``true_key`` is given).
    true_key
        obs column with the true niche, for accuracy, macro-F1 and a confusion matrix
        (:func:`~c2s_engine.tasks.label_metrics.classification_metrics`: labels compared
        ignoring case, extra spaces and a trailing period).
    cells
        Cells to predict (obs names, positions or mask; default all). Other cells get
        missing values.
    top_k
        Genes per sentence (default: the model card's).
    key_added
        obs column of the predictions.
    max_new_tokens
        Free text only; default the template's answer reserve (64).
    ligrec, ligrec_columns, max_interactions
        Optional ligand-receptor table (path or DataFrame), its (ligand, receptor) column
        names, and the most interactions put before each prompt (those expressed in the
        cell, see the module docstring).
    organism
        Organism words of the prompt (default: detected).

    Writes
    ------
    ``adata.obs[key_added]``
        Predicted niche (categorical; missing for cells not predicted or without genes).
    ``adata.obs[key_added + '_confidence']``
        Softmax probability of the predicted label (scoring only; NaN elsewhere).
    ``adata.uns['c2s']['spatial_niche']``
        Provenance; params (mode 'scored'/'free_text', candidates, key_added, ligrec, ...)
        and ``metrics`` when a truth column is known: ``truth_key`` plus
        :meth:`~c2s_engine.tasks.label_metrics.LabelMetrics.to_dict` (``accuracy``,
        ``macro_f1``, ``confusion`` with rows truth and columns prediction, ``labels``, ...).

    Raises
    ------
    TaskNotSupportedError, ObsColumnError, LabelsError, SentenceError, InteractionTableError
    """
    loaded = resolve_model(model)
    supported = check_task(loaded, NICHE_TASK, allow_unsupported=allow_unsupported)
    top_k = int(top_k or loaded.card.top_k)
    template = get_template(NICHE_TASK, variant=variant)
    context = LigrecContext(ligrec, ligrec_columns, max_interactions)
    if labels_from is not None and labels_from not in adata.obs:
        raise ObsColumnError(f"obs has no column {labels_from!r} to take niche labels from",
                             f"use one of: {', '.join(map(str, adata.obs.columns)) or 'none'}")
    if labels is None and labels_from is not None:
        column = adata.obs[labels_from]
        values = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) \
            else column.dropna().unique()
        labels = [str(v) for v in values if str(v).strip()]
    candidates = None if labels is None else list(dict.fromkeys(str(v) for v in labels))
    if candidates is not None and not candidates:
        raise LabelsError("no candidate niche labels were given",
                          "pass labels=[...] or a labels_from column with values")

    positions = cell_positions(adata, cells)
    n_selected = positions.size
    sentences = cell_sentences(adata, top_k, positions)
    keep = [i for i, s in enumerate(sentences) if s]
    positions = positions[keep]
    sentences = [sentences[i] for i in keep]
    if not sentences:
        raise SentenceError("none of the selected cells has an expressed gene",
                            "select cells with nonzero expression")
    organism_text = organism_word(adata, organism)
    prompts = [interaction_block(context.interactions([s])) + template.format_prompt(
        num_genes=len(s.split()), organism=organism_text, cell_sentence=s) for s in sentences]

    names = adata.obs_names[positions]
    confidence = None
    if candidates is not None:
        loglik, stats = cached_scores(loaded, prompts, candidates, task=NICHE_TASK,
                                      batch_size=batch_size, progress=progress, cancel=cancel,
                                      cache=cache)
        probs = softmax(loglik, axis=1)
        best = probs.argmax(axis=1)
        predicted = pd.Series([candidates[b] for b in best], index=names, dtype=object)
        confidence = pd.Series(probs[np.arange(len(best)), best], index=names)
        max_new_tokens = None
    else:
        max_new_tokens = int(max_new_tokens or template.stop.reserve_tokens)
        answers, stats = cached_generate(loaded, prompts, task=NICHE_TASK,
                                         max_new_tokens=max_new_tokens,
                                         stop=template.stop.stop_strings, batch_size=batch_size,
                                         progress=progress, cancel=cancel, cache=cache)
        predicted = pd.Series([template.stop.cut(a) for a in answers], index=names, dtype=object)

    full = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    full[names] = predicted
    adata.obs[key_added] = pd.Categorical(full, categories=candidates)
    if confidence is not None:
        adata.obs[f"{key_added}_confidence"] = confidence.reindex(adata.obs_names).to_numpy()

    truth_key = true_key or labels_from
    metrics: dict[str, Any] = {}
    if truth_key is not None:
        if truth_key not in adata.obs:
            raise ObsColumnError(f"obs has no column {truth_key!r} with the true niches",
                                 f"use one of: {', '.join(map(str, adata.obs.columns))}")
        metrics = {"truth_key": truth_key, **classification_metrics(
            adata.obs.loc[names, truth_key].astype(object), predicted).to_dict()}
    prov = provenance(
        loaded, task=NICHE_TASK, template=f"{NICHE_TASK}:{template.variant}", top_k=top_k,
        seed=None, stats=stats, card_lists_task=supported,
        params={"mode": "free_text" if candidates is None else "scored",
                "candidates": candidates, "key_added": key_added, "n_cells": len(names),
                "n_empty_skipped": int(n_selected - len(keep)),
                "max_new_tokens": max_new_tokens, "variant": str(variant), **context.params()})
    if metrics:
        prov["metrics"] = metrics
    record(adata, "spatial_niche", prov)
    return NicheResult(labels=predicted, confidence=confidence, metrics=metrics, stats=stats,
                       prompts=prompts)


# ---------------------------------------------------------------- multi-cell prompts

def _pack(model, template, sentences: list[str], fields: dict[str, Any], context: LigrecContext,
          reserve_tokens: int) -> tuple[str, int]:
    """Prompt holding as many of ``sentences`` as fit, after their interaction block.

    Room for the block of all offered cells is kept; when fewer cells fit, only the
    interactions of the cells kept are written (a subset of that block, so it still fits).
    Returns the prompt and the number of cells in it.
    """
    offered = context.interactions(sentences)
    block = interaction_block(offered)
    extra = count_tokens(model.tokenizer, block) if block else 0
    packed = pack_cells(template, sentences, model.tokenizer,
                        context_length=model.card.context_length,
                        reserve_tokens=reserve_tokens + extra, fields=fields)
    genes = genes_of(sentences[:packed.n_cells_used])
    kept = [i for i in offered if all(g in genes for side in i for g in side)]
    return interaction_block(kept) + packed.text, packed.n_cells_used


def _check_graph(adata: AnnData):
    graph = stored_graph(adata)
    if graph.shape != (adata.n_obs, adata.n_obs):
        raise SpatialDataError(
            f"the spatial neighbour graph is {graph.shape[0]} x {graph.shape[1]} but the data "
            f"has {adata.n_obs} cells", "run spatial_neighbors again after subsetting the cells")
    return graph


@dataclass
class SameNeighborhoodResult:
    """Questions and answers of :func:`predict_same_neighborhood`.

    ``table`` has one row per cell set: center, same (truth), predicted, p_yes, n_cells,
    members (comma-joined obs names in prompt order).
    """

    table: pd.DataFrame
    accuracy: float
    confusion: np.ndarray
    stats: CallStats
    prompts: list[str] = field(repr=False, default_factory=list)


def predict_same_neighborhood(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    cells: Any = None,
    n_pairs: int = 50,
    max_cells: int = 8,
    seed: int = 0,
    top_k: int | None = None,
    ligrec: TableLike | None = None,
    ligrec_columns: Sequence[str] | None = None,
    max_interactions: int = 20,
    organism: str | None = None,
    variant: str | int = "canonical",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> SameNeighborhoodResult:
    """Ask whether sets of cells come from one spatial neighbourhood (yes/no, scored).

    Sets are built as in the paper (section 4.6.7, see
    :func:`~c2s_engine.tasks.neighborhoods.neighborhood_sets`) from the graph of
    :func:`spatial_neighbors`: for each of ``n_pairs`` random center cells, a positive set
    (the center and its neighbours) and a negative set (the center and as many cells
    outside its neighbourhood). " yes." and " no." are scored after each prompt; the answer
    is yes when its softmax probability ``p_yes >= 0.5``. Cells without expressed genes are
    left out of the prompts, and a set is cut to the cells that fit the context.

    Parameters
    ----------
    cells
        Cells that may be drawn as centers (default all); set members come from all cells.
    n_pairs
        Centers drawn (each gives one positive and one negative set).
    max_cells
        Most cells per set, the center included.
    seed
        Seeds the choice of centers, neighbours, distant cells and the order within sets.
    top_k
        Genes per sentence (default: the model card's).
    ligrec, ligrec_columns, max_interactions, organism
        As in :func:`predict_niche`; the interactions are those among the set's cells.

    Writes
    ------
    ``adata.uns['c2s']['spatial_same_neighborhood']``
        Provenance, plus ``table`` (dict of equal-length arrays: center, same, predicted,
        p_yes, n_cells, members), ``accuracy``, ``accuracy_positive``,
        ``accuracy_negative``, ``confusion`` (2 x 2, rows truth yes/no, columns predicted
        yes/no), ``n_positive``, ``n_negative``.

    Raises
    ------
    SpatialDataError
        No neighbour graph (run :func:`spatial_neighbors`) or no cell with a neighbour.
    """
    loaded = resolve_model(model)
    supported = check_task(loaded, SAME_TASK, allow_unsupported=allow_unsupported)
    top_k = int(top_k or loaded.card.top_k)
    template = get_template(SAME_TASK, variant=variant)
    context = LigrecContext(ligrec, ligrec_columns, max_interactions)
    graph = _check_graph(adata)
    rng = np.random.default_rng(seed)
    candidates = None if cells is None else cell_positions(adata, cells)
    sets = neighborhood_sets(graph, n_pairs=n_pairs, max_cells=max_cells, rng=rng,
                             candidates=candidates)
    involved = np.unique(np.concatenate([s.members for s in sets]))
    sentence = dict(zip(involved.tolist(), cell_sentences(adata, top_k, involved), strict=True))
    fields = {"organism": organism_word(adata, organism)}

    rows, prompts = [], []
    for cell_set in sets:
        members = [m for m in cell_set.members if sentence[m]]
        if not members:
            continue
        prompt, n_used = _pack(loaded, template, [sentence[m] for m in members], fields,
                               context, template.stop.reserve_tokens)
        prompts.append(prompt)
        rows.append({"center": str(adata.obs_names[cell_set.center]), "same": cell_set.same,
                     "n_cells": n_used,
                     "members": ",".join(adata.obs_names[members[:n_used]].astype(str))})
    if not rows:
        raise SentenceError("every drawn cell set is without expressed genes",
                            "use cells with nonzero expression")
    loglik, stats = cached_scores(loaded, prompts, [YES, NO], task=SAME_TASK,
                                  batch_size=batch_size, progress=progress, cancel=cancel,
                                  cache=cache)
    table = pd.DataFrame(rows)
    table["p_yes"] = softmax(loglik, axis=1)[:, 0]
    table["predicted"] = table["p_yes"] >= 0.5
    table = table[["center", "same", "predicted", "p_yes", "n_cells", "members"]]

    truth, predicted = table["same"].to_numpy(bool), table["predicted"].to_numpy(bool)
    confusion = np.array([[np.sum(truth & predicted), np.sum(truth & ~predicted)],
                          [np.sum(~truth & predicted), np.sum(~truth & ~predicted)]],
                         dtype=np.int64)
    accuracy = float(np.mean(truth == predicted))
    prov = provenance(
        loaded, task=SAME_TASK, template=f"{SAME_TASK}:{template.variant}", top_k=top_k,
        seed=seed, stats=stats, card_lists_task=supported,
        params={"n_pairs": int(n_pairs), "max_cells": int(max_cells), "variant": str(variant),
                "neighbors": dict(adata.uns.get("c2s", {}).get("spatial_neighbors", {})),
                **context.params()})
    prov.update({
        "table": {c: (table[c].to_numpy(dtype=str) if c in ("center", "members")
                      else table[c].to_numpy()) for c in table.columns},
        "accuracy": accuracy,
        # NaN, not 0, when a kind of set is absent: there is nothing to be right about.
        "accuracy_positive": float(predicted[truth].mean()) if truth.any() else np.nan,
        "accuracy_negative": float((~predicted[~truth]).mean()) if (~truth).any() else np.nan,
        "confusion": confusion,
        "n_positive": int(truth.sum()),
        "n_negative": int((~truth).sum()),
    })
    record(adata, "spatial_same_neighborhood", prov)
    return SameNeighborhoodResult(table=table, accuracy=accuracy, confusion=confusion,
                                  stats=stats, prompts=prompts)


def generate_neighbors(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    center_cells: Any,
    n: int = 1,
    max_cells: int = 8,
    seed: int = 0,
    top_k: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    ligrec: TableLike | None = None,
    ligrec_columns: Sequence[str] | None = None,
    max_interactions: int = 20,
    organism: str | None = None,
    spatial_key: str = "spatial",
    variant: str | int = "canonical",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> AnnData:
    """Generate new cells for the neighbourhoods of ``center_cells`` (``spatial_neighbor_generation``).

    A neighbourhood is the center cell followed by its neighbours in the graph of
    :func:`spatial_neighbors` (a random ``max_cells - 1`` of them when there are more),
    packed into the context; the generated sentence is rebuilt as expression with the
    reverse transform (fitted and stored in ``adata`` when absent).

    Parameters
    ----------
    center_cells
        Centers: obs names, positions or a boolean mask.
    n
        Cells generated per center (repeats use seed + r when sampling; greedy repeats are
        identical).
    max_cells
        Most cells in a neighbourhood prompt, the center included.
    max_new_tokens
        Default: the longest context cell's tokens plus 8, capped by the context.
    spatial_key
        obsm key of the coordinates; the generated cells get their center's position there.

    Other parameters are as in :func:`predict_same_neighborhood` and
    :func:`~c2s_engine.tasks.perturb.predict_perturbation`.

    Returns
    -------
    AnnData
        Generated cells x ``adata``'s genes. obs: ``c2s_generated`` (True), ``c2s_task``,
        ``c2s_center_cell``, ``c2s_neighborhood`` (comma-joined obs names of the context
        cells, center first), ``c2s_n_context_cells``, ``cell_sentence`` and the
        reconstruction counts; ``obsm['spatial']``: the center's coordinates (when
        ``adata`` has them); uns['c2s']: ``spatial_neighbor_generation`` (provenance),
        ``reverse``, ``reconstruction``, ``identifiers``.

    Writes
    ------
    ``adata.uns['c2s']['spatial_neighbor_generation']``
        Provenance (params n, n_centers, max_cells, sampling, max_new_tokens, ligrec).
    """
    loaded = resolve_model(model)
    supported = check_task(loaded, NEIGHBOR_TASK, allow_unsupported=allow_unsupported)
    top_k = int(top_k or loaded.card.top_k)
    template = get_template(NEIGHBOR_TASK, variant=variant)
    context = LigrecContext(ligrec, ligrec_columns, max_interactions)
    graph = _check_graph(adata)
    if n < 1 or max_cells < 1:
        raise TaskOptionError(f"n and max_cells must be at least 1, got n={n}, "
                              f"max_cells={max_cells}", "pass n >= 1 and max_cells >= 1")
    centers = cell_positions(adata, center_cells)
    if centers.size == 0:
        raise TaskOptionError("no center cell was selected", "pass at least one center cell")
    rng = np.random.default_rng(seed)
    neighborhoods = []
    for center in centers.tolist():
        near = neighbors_of(graph, center)
        if near.size > max_cells - 1:
            near = np.sort(rng.choice(near, size=max_cells - 1, replace=False))
        neighborhoods.append([center, *near.tolist()])
    involved = np.unique(np.concatenate([np.asarray(h) for h in neighborhoods]))
    sentence = dict(zip(involved.tolist(), cell_sentences(adata, top_k, involved), strict=True))
    neighborhoods = [[m for m in h if sentence[m]] for h in neighborhoods]
    empty = [str(adata.obs_names[c]) for c, h in zip(centers, neighborhoods, strict=True)
             if not h]
    if empty:
        raise SentenceError(f"{len(empty)} centers and their neighbours have no expressed "
                            f"gene (e.g. {empty[0]})", "choose other center cells")

    reserve = int(max_new_tokens or default_answer_tokens(loaded, list(sentence.values())))
    fields = {"organism": organism_word(adata, organism)}
    prompts, used = [], []
    for members in neighborhoods:
        prompt, n_used = _pack(loaded, template, [sentence[m] for m in members], fields,
                               context, reserve)
        prompts.append(prompt)
        used.append(members[:n_used])
    max_new_tokens = answer_tokens(loaded, prompts, [], reserve)
    which = np.repeat(np.arange(centers.size), n)
    answers, stats = generate_rounds(
        loaded, [prompts[i] for i in which], replicate_index(which), task=NEIGHBOR_TASK,
        template=template, seed=seed, do_sample=do_sample, temperature=temperature,
        top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
        progress=progress, cancel=cancel, cache=cache)

    names = adata.obs_names.astype(str)
    obs = pd.DataFrame(index=pd.Index([f"c2s_neighbor_{i}" for i in range(which.size)]))
    obs["c2s_generated"] = True
    obs["c2s_task"] = NEIGHBOR_TASK
    obs["c2s_center_cell"] = names[centers[which]].to_numpy()
    obs["c2s_neighborhood"] = [",".join(names[used[i]]) for i in which.tolist()]
    obs["c2s_n_context_cells"] = np.array([len(used[i]) for i in which.tolist()], np.int64)
    out = reconstructed_cells(adata, answers, obs, top_k)
    if spatial_key in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm[spatial_key])[centers[which]]

    prov = provenance(
        loaded, task=NEIGHBOR_TASK, template=f"{NEIGHBOR_TASK}:{template.variant}",
        top_k=top_k, seed=seed, stats=stats, card_lists_task=supported,
        params={"n": int(n), "n_centers": int(centers.size), "max_cells": int(max_cells),
                "do_sample": bool(do_sample), "temperature": float(temperature),
                "top_p": float(top_p), "max_new_tokens": int(max_new_tokens),
                "variant": str(variant),
                "neighbors": dict(adata.uns.get("c2s", {}).get("spatial_neighbors", {})),
                **context.params()})
    record(adata, NEIGHBOR_TASK, prov)
    record(out, NEIGHBOR_TASK, prov)
    return out
