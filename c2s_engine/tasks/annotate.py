"""Cell type annotation: a label per cell, free text or scored among candidate labels.

Every cell is asked the ``cell_type_prediction`` question in the canonical wording of the
released checkpoints, with ``num_genes`` = the number of genes actually in its sentence (a cell
with fewer expressed genes than ``top_k`` says so) and the organism recorded by
:func:`c2s_engine.pp.prepare`. Two ways of answering, chosen by ``mode``:

* generate: greedy free text, cut at the template's stop rule (first period ending a word);
* score: each candidate label's log-likelihood as the answer (``" {label}."``), a softmax over
  the candidates gives a per-cell confidence and the best one is the prediction.

``auto`` scores when candidates exist and generates otherwise; ``both`` does both (the scored
label is the prediction and the free text is kept next to it).

Genes with equal expression in a cell (counts of 1 and 2 are common) are ranked in an arbitrary
order, and a label can hang on it. With ``tie_orders=N`` the candidates are scored on N
sentences of each cell that differ only in that order (the stored one, then tie seeds +1, +2,
...) and their probabilities averaged: a steadier label for N times the scoring time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.special import softmax

from c2s_engine.errors import LabelsError, ObsColumnError, TaskOptionError
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import get_template
from c2s_engine.tasks.label_metrics import LabelMetrics, classification_metrics, cluster_summary
from c2s_engine.tasks.runtime import (
    CacheLike,
    ModelLike,
    cached_generate,
    cached_scores,
    cell_sentences,
    check_task,
    organism_word,
    provenance,
    record,
    require_cells,
    resolve_model,
)

TASK = "cell_type_prediction"
MODES = ("auto", "generate", "score", "both")


def obs_keys(key_added: str = "c2s_cell_type") -> dict[str, str]:
    """Names of everything :func:`annotate` writes for ``key_added``.

    The prefix ``p`` is ``key_added`` without a trailing ``_cell_type``, so the default
    ``c2s_cell_type`` gives ``obs['c2s_cell_type']``, ``obs['c2s_cell_type_generated']``,
    ``obs['c2s_confidence']``, ``obs['c2s_cluster_cell_type']`` and ``obsm['c2s_label_probs']``.
    """
    prefix = key_added.removesuffix("_cell_type")
    return {"prediction": key_added, "generated": f"{key_added}_generated",
            "confidence": f"{prefix}_confidence", "cluster": f"{prefix}_cluster_cell_type",
            "probabilities": f"{prefix}_label_probs"}


@dataclass
class AnnotationResult:
    """What :func:`annotate` found (also written into the AnnData).

    Attributes
    ----------
    cell_type
        Prediction per cell, indexed by ``obs_names``.
    mode
        The mode that ran: ``'generate'``, ``'score'`` or ``'both'``.
    generated
        Free-text answer per cell (None when nothing was generated).
    candidates
        Candidate labels in the column order of ``probabilities`` (empty when not scored).
    probabilities
        ``(n_cells, n_candidates)`` softmax of the candidates' log-likelihoods (rows sum to 1).
    confidence
        Probability of the predicted label per cell (None when not scored).
    clusters
        Per-cluster summary (see :func:`~c2s_engine.tasks.label_metrics.cluster_summary`).
    metrics
        Agreement with the true labels, when they were given.
    provenance
        The record stored in ``uns['c2s']['annotate']``.
    """

    cell_type: pd.Series
    mode: str
    generated: pd.Series | None
    candidates: list[str]
    probabilities: np.ndarray | None
    confidence: pd.Series | None
    clusters: pd.DataFrame | None
    metrics: LabelMetrics | None
    provenance: dict[str, Any]


def _obs_column(adata: AnnData, column: str, role: str) -> pd.Series:
    if column not in adata.obs.columns:
        shown = ", ".join(map(str, adata.obs.columns[:12])) or "none"
        raise ObsColumnError(f"the {role} column {column!r} is not in adata.obs",
                             f"use one of the obs columns ({shown})")
    return adata.obs[column]


def _candidates(adata: AnnData, labels: Sequence[str] | None,
                labels_from: str | None) -> tuple[list[str], str]:
    """Candidate labels (distinct, in order) and where they came from ('' when none)."""
    if labels is not None and labels_from is not None:
        raise TaskOptionError("both labels and labels_from were given",
                              "pass either a list of labels or the obs column holding them")
    if labels_from is not None:
        column = _obs_column(adata, labels_from, "labels_from")
        if isinstance(column.dtype, pd.CategoricalDtype):
            values = [str(c) for c in column.cat.categories if (column == c).any()]
        else:
            values = sorted({str(v) for v in column.dropna()})
        source = f"obs:{labels_from}"
    elif labels is not None:
        if isinstance(labels, str):
            raise TaskOptionError(f"labels must be a list of labels, got the string {labels!r}",
                                  f"pass labels=[{labels!r}, ...]")
        values, source = list(labels), "list"
    else:
        return [], ""
    candidates = list(dict.fromkeys(" ".join(str(v).split()) for v in values))
    candidates = [c for c in candidates if c]
    if not candidates:
        raise LabelsError(f"no candidate labels in {source.removeprefix('obs:')}",
                          "give at least one non-empty label")
    return candidates, source


def _prompts(template, organism: str, sentences: Sequence[str]) -> list[str]:
    return [template.format_prompt(num_genes=len(s.split()), organism=organism, cell_sentence=s)
            for s in sentences]


def _tie_order_sentences(adata: AnnData, top_k: int, order: int) -> list[str]:
    """The cells' sentences with the ties of the stored ranking broken by seed ``+ order``
    (nothing is written to ``adata``)."""
    from c2s_engine.sentences import iter_sentence_chunks

    stored = adata.uns["c2s"]["sentences"]
    seed = max(int(stored.get("seed", 0)), 0) + order
    return [s for _, chunk in iter_sentence_chunks(adata, top_k, seed=seed) for s in chunk]


def _resolve_mode(mode: str, candidates: list[str]) -> str:
    if mode not in MODES:
        raise TaskOptionError(f"unknown annotation mode {mode!r}",
                              f"use one of {', '.join(repr(m) for m in MODES)}")
    if mode == "auto":
        return "score" if candidates else "generate"
    if mode in ("score", "both") and not candidates:
        raise LabelsError(f"mode={mode!r} scores candidate labels but none were given",
                          "pass labels=[...] or labels_from='<obs column>', or use "
                          "mode='generate'")
    return mode


def annotate(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    labels: Sequence[str] | None = None,
    labels_from: str | None = None,
    truth: str | None = None,
    top_k: int | None = None,
    groupby: str | None = None,
    mode: str = "auto",
    max_new_tokens: int = 16,
    tie_orders: int = 1,
    key_added: str = "c2s_cell_type",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> AnnotationResult:
    """Predict the cell type of every cell (see the module docstring for the two ways).

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`); its cell sentences are computed when
        missing or shorter than ``top_k``.
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    labels, labels_from
        Candidate labels: a list, or an obs column whose distinct values are the candidates
        (categories keep their order, other values are sorted). At most one of the two.
    truth
        obs column of true labels for the metrics; defaults to ``labels_from``.
    top_k
        Genes per sentence; the model card's ``top_k`` by default.
    groupby
        obs column of clusters to summarise (majority label and agreement).
    mode
        ``'auto'``, ``'generate'``, ``'score'`` or ``'both'``.
    max_new_tokens
        Longest free-text answer.
    tie_orders
        Orders of equally expressed genes to score each cell in, probabilities averaged
        (scoring only; see the module docstring).
    key_added
        obs key of the prediction; the other keys derive from it (:func:`obs_keys`).
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` recomputes).
    allow_unsupported
        Run even if the model card does not list ``cell_type_prediction`` (with a warning;
        the provenance says ``card_lists_task=False``).

    Returns
    -------
    AnnotationResult

    Writes
    ------
    ``obs[key_added]``
        Categorical prediction: the best scored label, or the free text when only generated.
    ``obs[key_added + '_generated']``
        Free-text answer (when generated).
    ``obs['<p>_confidence']``, ``obsm['<p>_label_probs']``
        Probability of the prediction, and of every candidate (``(n_cells, n_candidates)``
        float32, columns as in ``uns['c2s']['annotate']['candidates']``), when scored.
    ``obs['<p>_cluster_cell_type']``
        The majority label of each cell's cluster (with ``groupby``).
    ``uns['c2s']['annotate']``
        Provenance (:func:`~c2s_engine.tasks.runtime.provenance`; ``calls`` holds one entry per
        model call that ran, ``'generate'`` and/or ``'score'``), ``keys`` (the names written),
        ``candidates`` (when scored), ``clusters`` (``groupby``, ``cluster``, ``cell_type``,
        ``agreement``, ``n_cells`` and, when scored, ``mean_confidence``) and ``metrics``
        (:meth:`LabelMetrics.to_dict`: ``accuracy``, ``macro_f1``, ``confusion``, ``labels``,
        ``n_true_labels``, ``n_cells``, ``n_unlabelled``, ``label_normalization``).

    Keys of an earlier run with the same ``key_added`` that this run does not write are
    removed first, so an old confidence never sits next to a new prediction.

    Raises
    ------
    TaskNotSupportedError, ObsColumnError, LabelsError, TaskOptionError
    """
    loaded = resolve_model(model)
    supported = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    candidates, labels_source = _candidates(adata, labels, labels_from)
    mode = _resolve_mode(mode, candidates)
    truth = truth if truth is not None else labels_from
    true_labels = _obs_column(adata, truth, "truth") if truth is not None else None
    groups = _obs_column(adata, groupby, "groupby") if groupby is not None else None
    if max_new_tokens < 1:
        raise TaskOptionError(f"max_new_tokens must be at least 1, got {max_new_tokens}",
                              "pass e.g. max_new_tokens=16")
    if tie_orders < 1:
        raise TaskOptionError(f"tie_orders must be at least 1, got {tie_orders}",
                              "pass 1 (the stored sentence only) or more")
    if tie_orders > 1 and mode == "generate":
        raise TaskOptionError("averaging over tie orders needs scored candidate labels, and "
                              "this run only generates free text",
                              "give candidate labels (or mode='score'), or set tie_orders=1")

    top_k = top_k or loaded.card.top_k
    sentences = cell_sentences(adata, top_k)
    require_cells(sentences, "annotate")
    organism = organism_word(adata)
    template = get_template(TASK)
    prompts = _prompts(template, organism, sentences)
    keys = obs_keys(key_added)
    for name in keys.values():  # no stale confidence may sit next to a new prediction
        if name in adata.obs:
            del adata.obs[name]
        adata.obsm.pop(name, None)
    calls: dict[str, Any] = {}
    index = adata.obs_names

    generated = None
    if mode in ("generate", "both"):
        answers, stats = cached_generate(
            loaded, prompts, task=TASK, max_new_tokens=max_new_tokens,
            stop=template.stop.stop_strings, batch_size=batch_size, progress=progress,
            cancel=cancel, cache=cache)
        calls["generate"] = stats.to_dict()
        generated = pd.Series([template.stop.cut(a) for a in answers], index=index, dtype=object)
        adata.obs[keys["generated"]] = generated.to_numpy()

    probabilities = confidence = None
    if mode in ("score", "both"):
        probabilities = np.zeros((len(prompts), len(candidates)))
        for order in range(tie_orders):
            order_prompts = prompts if order == 0 else _prompts(
                template, organism, _tie_order_sentences(adata, top_k, order))
            loglik, stats = cached_scores(
                loaded, order_prompts, candidates, task=TASK,
                format_candidate=lambda label: template.format_response(cell_type=label),
                batch_size=batch_size, progress=progress, cancel=cancel, cache=cache)
            calls["score" if order == 0 else f"score_tie_order_{order}"] = stats.to_dict()
            probabilities += softmax(loglik, axis=1) / tie_orders
        best = probabilities.argmax(axis=1)
        prediction = pd.Series(np.asarray(candidates, dtype=object)[best], index=index)
        confidence = pd.Series(probabilities[np.arange(len(best)), best], index=index)
        adata.obs[keys["confidence"]] = confidence.to_numpy()
        adata.obsm[keys["probabilities"]] = probabilities.astype(np.float32)
    else:
        prediction = generated
    adata.obs[key_added] = pd.Categorical(prediction.to_numpy(dtype=str))

    prov = provenance(
        loaded, task=TASK, template=f"{TASK}:{template.variant}", top_k=top_k, seed=None,
        card_lists_task=supported,
        params={"mode": mode, "key_added": key_added, "organism": organism,
                "max_new_tokens": max_new_tokens if generated is not None else None,
                "labels_source": labels_source or None, "truth": truth, "groupby": groupby,
                "tie_orders": tie_orders if probabilities is not None else None})
    prov["calls"] = calls
    prov["keys"] = {k: v for k, v in keys.items() if v in adata.obs or v in adata.obsm}
    if candidates and probabilities is not None:
        prov["candidates"] = list(candidates)

    clusters = None
    if groups is not None:
        clusters = cluster_summary(groups, prediction.to_numpy(),
                                   None if confidence is None else confidence.to_numpy())
        majority = clusters["cell_type"]
        adata.obs[keys["cluster"]] = pd.Categorical(
            groups.astype(str).map(majority).where(groups.notna()).to_numpy(),
            categories=sorted(set(majority)))
        prov["keys"]["cluster"] = keys["cluster"]
        prov["clusters"] = {"groupby": groupby, "cluster": list(clusters.index),
                            **{c: clusters[c].to_numpy() if c != "cell_type"
                               else list(clusters[c]) for c in clusters.columns}}

    metrics = None
    if true_labels is not None:
        metrics = classification_metrics(true_labels.to_numpy(dtype=object),
                                          prediction.to_numpy())
        prov["metrics"] = metrics.to_dict()
    record(adata, "annotate", prov)
    return AnnotationResult(cell_type=prediction.rename(key_added), mode=mode,
                            generated=generated, candidates=candidates if probabilities
                            is not None else [], probabilities=probabilities,
                            confidence=confidence, clusters=clusters, metrics=metrics,
                            provenance=prov)
