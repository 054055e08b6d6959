"""Questions about a dataset, answered from a grounded context the UI can cite.

The ``question_answering`` prompt holds two kinds of context: dataset facts computed with
scanpy (size, organism, most expressed genes, cluster sizes and marker genes from
``sc.tl.rank_genes_groups``; see :mod:`c2s_engine.tasks.facts`) and the sentences of cells
from the chosen scope: the whole dataset (stratified by cluster when ``groupby`` is
given), one cluster, or a list of cells. As many cells as fit the model's context are kept.
Every answer returns that context (cells, sentences, facts, the exact prompt) and is added
to a question history in ``uns['c2s']['qa']``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from anndata import AnnData

from c2s_engine.errors import ContextBudgetError, GroupingError, QuestionError
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import PromptTemplate, get_template
from c2s_engine.tasks.facts import (
    CellContext,
    DatasetFacts,
    check_n_cells,
    dataset_facts,
    group_labels,
    order_cells,
    pack_cell_context,
    unknown_cluster_error,
)
from c2s_engine.tasks.runtime import (
    CacheLike,
    ModelLike,
    cached_generate,
    check_task,
    organism_word,
    provenance,
    record,
    resolve_model,
)

TASK = "question_answering"
HISTORY_KEY = "qa"
PROVENANCE_KEY = "answer_question"
DATASET_SCOPE = "dataset"
N_SHARED_GENES = 10


@dataclass
class Answer:
    """An answer and the context it was given, so the UI can cite it.

    Attributes
    ----------
    question, answer
        The question (whitespace normalised) and the model's answer.
    scope
        ``'dataset'``, the cluster name, or ``'cells'`` for a list of cells.
    scope_kind
        ``'dataset'``, ``'cluster'`` or ``'cells'``.
    groupby
        obs column of the clusters ('' when none).
    cells_used
        obs names of the cells in the prompt, in prompt order.
    sentences
        Their sentences as in the prompt.
    genes
        Genes in the sentences of the most cells used (most shared first).
    facts
        The dataset facts; ``facts_text`` is their wording in the prompt.
    prompt
        The exact prompt the model saw.
    n_tokens, budget
        Prompt tokens and the budget they had to fit (context minus ``max_new_tokens``).
    provenance
        How the answer was made (also in ``uns['c2s']['answer_question']``).
    """

    question: str
    answer: str
    scope: str
    scope_kind: str
    groupby: str
    cells_used: list[str]
    sentences: list[str]
    genes: list[str]
    facts: DatasetFacts
    facts_text: str
    prompt: str
    n_tokens: int
    budget: int
    provenance: dict[str, Any] = field(default_factory=dict)


def _scope_cells(adata: AnnData, scope: str | Sequence[str], groupby: str | None, seed: int,
                 n_cells: int | None) -> tuple[np.ndarray, str, str]:
    """(cell positions in order of preference, scope label, scope kind)."""
    if isinstance(scope, str) and scope == DATASET_SCOPE:
        return order_cells(adata, seed=seed, groupby=groupby, n_cells=n_cells), scope, "dataset"
    if isinstance(scope, str):
        if groupby is None:
            raise GroupingError(f"scope {scope!r} names a cluster but no groupby column was given",
                                "pass groupby= the obs column holding the clusters, or "
                                f"scope={DATASET_SCOPE!r}")
        labels = group_labels(adata, groupby)
        members = np.flatnonzero((labels == scope).to_numpy())
        if not len(members):
            raise unknown_cluster_error(scope, groupby, sorted(labels.dropna().unique()))
        return order_cells(adata, seed=seed, cells=members, n_cells=n_cells), scope, "cluster"
    names = list(dict.fromkeys(str(n) for n in scope))
    if not names:
        raise GroupingError("the scope is an empty list of cells",
                            f"select at least one cell, or use scope={DATASET_SCOPE!r}")
    positions = adata.obs_names.get_indexer(names)
    missing = [n for n, p in zip(names, positions, strict=True) if p < 0]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise GroupingError(f"{len(missing)} cell(s) of the scope are not in obs_names: {shown}",
                            "pass obs names of this AnnData")
    check_n_cells(n_cells)
    # The user's own selection keeps its order: the first cells are the ones kept.
    return positions[:n_cells], "cells", "cells"


def _pack_with_facts(adata: AnnData, positions: np.ndarray, template: PromptTemplate,
                     tokenizer: Any, facts: DatasetFacts, focus: str | None,
                     fields: dict[str, Any], **options: Any) -> tuple[str, CellContext]:
    """Facts text and packed cells; with many clusters, list fewer of them until one cell fits."""
    limit = len(facts.clusters)
    while True:
        facts_text = facts.to_text(focus=focus, max_clusters=limit)
        try:
            return facts_text, pack_cell_context(adata, positions, template, tokenizer,
                                                 fields={**fields, "context": facts_text},
                                                 **options)
        except ContextBudgetError:
            if limit == 0:
                raise
            limit //= 2


def answer_question(
    adata: AnnData,
    question: str,
    model: ModelLike = "demo",
    *,
    scope: str | Sequence[str] = DATASET_SCOPE,
    groupby: str | None = None,
    n_cells: int | None = 20,
    top_k: int | None = None,
    seed: int = 0,
    n_markers: int = 5,
    context_length: int | None = None,
    max_new_tokens: int | None = None,
    variant: int | str = "canonical",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> Answer:
    """Answer ``question`` from dataset facts and the sentences of cells in ``scope``.

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    question
        The question, in words.
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    scope
        ``'dataset'`` (cells drawn from every cluster), a cluster name of ``groupby``, or a
        list of obs names (used in the given order).
    groupby
        obs column of the clusters: their sizes and marker genes go into the facts.
    n_cells
        Cells offered to the prompt; None offers cells until the context is full. Fewer are
        used when they do not all fit.
    top_k
        Genes per cell sentence; the model card's ``top_k`` by default.
    seed
        Draws the cells (and seeds sampling when ``do_sample``).
    n_markers
        Marker genes per cluster in the facts.
    context_length
        Token budget of prompt plus answer; the model card's ``context_length`` by default.
    max_new_tokens
        Longest answer in tokens, kept free in the context; default the template's
        ``reserve_tokens`` (512).
    variant
        Prompt wording (``'canonical'`` or a paraphrase number).
    do_sample, temperature, top_p
        Sampling controls (greedy by default).
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` recomputes).
    allow_unsupported
        Run even if the model card does not list ``question_answering``.

    Returns
    -------
    Answer

    Writes
    ------
    ``adata.uns['c2s']['qa']``
        The question history: entry ``str(i)`` for the i-th question, ``{question, answer,
        scope, scope_kind, groupby, facts (the facts text given), cells_used, n_tokens, model,
        time}``. Read it with
        :func:`qa_history`.
    ``adata.uns['c2s']['answer_question']``
        Provenance of the latest answer.
    ``adata.uns['c2s']['markers']``
        Cached marker genes when ``groupby`` is given.

    Raises
    ------
    QuestionError
        When the question is empty.
    GroupingError
        When the scope names an unknown cluster (the message lists them) or unknown cells.
    """
    question = " ".join(str(question or "").split())
    if not question:
        raise QuestionError("the question is empty", "type a question about the dataset, e.g. "
                            "'Which cell types are in this sample?'")
    positions, scope_label, scope_kind = _scope_cells(adata, scope, groupby, seed, n_cells)
    loaded = resolve_model(model)
    lists_task = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    template = get_template(TASK, variant=variant)
    top_k = top_k or loaded.card.top_k
    context_length = context_length or loaded.card.context_length
    max_new_tokens = max_new_tokens or template.stop.reserve_tokens
    facts = dataset_facts(adata, groupby, n_markers=n_markers)
    fields = {"organism": organism_word(adata), "question": question}
    focus = scope_label if scope_kind == "cluster" else None
    facts_text, context = _pack_with_facts(adata, positions, template, loaded.tokenizer, facts,
                                           focus, fields, top_k=top_k,
                                           context_length=context_length,
                                           reserve_tokens=max_new_tokens)
    (answer,), stats = cached_generate(
        loaded, [context.packed.text], task=TASK, max_new_tokens=max_new_tokens,
        stop=template.stop.stop_strings, do_sample=do_sample, temperature=temperature,
        no_repeat_ngram_size=template.stop.no_repeat_ngram_size,
        top_p=top_p, seed=seed if do_sample else None, batch_size=batch_size,
        progress=progress, cancel=cancel, cache=cache)
    prov = provenance(loaded, task=TASK, template=f"{TASK}:{template.variant}", top_k=top_k,
                      seed=seed, stats=stats, card_lists_task=lists_task,
                      params={"scope": scope_label, "scope_kind": scope_kind, "groupby": groupby,
                              "n_cells": n_cells, "max_new_tokens": max_new_tokens,
                              "context_length": context_length, "do_sample": do_sample,
                              "temperature": temperature, "top_p": top_p,
                              "no_repeat_ngram_size": template.stop.no_repeat_ngram_size})
    record(adata, PROVENANCE_KEY, prov)
    history = adata.uns["c2s"].setdefault(HISTORY_KEY, {})
    history[str(len(history))] = {
        "question": question, "answer": answer, "scope": scope_label, "scope_kind": scope_kind,
        "groupby": groupby or "", "facts": facts_text,
        "cells_used": np.array(context.cells, dtype=object),
        "n_tokens": context.packed.n_tokens, "model": loaded.name,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return Answer(question=question, answer=answer, scope=scope_label, scope_kind=scope_kind,
                  groupby=groupby or "", cells_used=context.cells, sentences=context.sentences,
                  genes=context.shared_genes(N_SHARED_GENES), facts=facts, facts_text=facts_text,
                  prompt=context.packed.text, n_tokens=context.packed.n_tokens,
                  budget=context.packed.budget, provenance=prov)


def qa_history(adata: AnnData) -> list[dict[str, Any]]:
    """The questions asked about ``adata``, oldest first (cells_used as lists of str)."""
    stored = adata.uns.get("c2s", {}).get(HISTORY_KEY, {})
    return [{**stored[k], "cells_used": [str(c) for c in stored[k]["cells_used"]]}
            for k in sorted(stored, key=int)]
