"""Dataset summary: an abstract-style description of the study the cells come from.

Cells are drawn with the seed (taking turns between the clusters of ``groupby`` when given,
so the prompt is stratified), their sentences packed into the
``natural_language_interpretation`` prompt, whose cue is the released checkpoints'
``Abstract summary:``, and the model writes the abstract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData

from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import get_template
from c2s_engine.tasks.facts import order_cells, pack_cell_context
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

TASK = "natural_language_interpretation"
SUMMARY_KEY = "summary"


@dataclass
class Summary:
    """A dataset summary and the context it was written from.

    Attributes
    ----------
    text
        The abstract.
    cells_used
        obs names of the cells in the prompt, in prompt order.
    sentences
        Their sentences as in the prompt.
    n_cells_used, n_genes_per_cell
        Cells in the prompt and genes per cell (the longest cell).
    n_tokens, budget
        Prompt tokens and the budget they had to fit (context minus ``max_new_tokens``).
    context_length
        The context window packed to.
    prompt
        The exact prompt the model saw.
    groupby
        Column the cells were stratified by ('' when none).
    provenance
        How the summary was made (also in ``uns['c2s']['summary']['provenance']``).
    """

    text: str
    cells_used: list[str]
    sentences: list[str]
    n_cells_used: int
    n_genes_per_cell: int
    n_tokens: int
    budget: int
    context_length: int
    prompt: str
    groupby: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


def summarize_dataset(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    n_cells: int | None = 20,
    groupby: str | None = None,
    top_k: int | None = None,
    seed: int = 0,
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
) -> Summary:
    """Write an abstract-style summary of the dataset from a multi-cell context.

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    n_cells
        Cells offered to the prompt (the released models saw 5-20); None offers cells until
        the context is full. Fewer are used when they do not all fit.
    groupby
        obs column (clusters or labels) to stratify the cells by.
    top_k
        Genes per cell sentence; the model card's ``top_k`` by default.
    seed
        Draws the cells (and seeds sampling when ``do_sample``).
    context_length
        Token budget of prompt plus summary; the model card's ``context_length`` by default.
    max_new_tokens
        Longest summary in tokens, kept free in the context; default the template's
        ``reserve_tokens`` (512).
    variant
        Prompt wording (``'canonical'`` or a paraphrase number).
    do_sample, temperature, top_p
        Sampling controls (greedy by default).
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` recomputes).
    allow_unsupported
        Run even if the model card does not list ``natural_language_interpretation``.

    Returns
    -------
    Summary

    Writes
    ------
    ``adata.uns['c2s']['summary']``
        ``{text, cells_used, n_cells_used, n_genes_per_cell, n_tokens, budget,
        context_length, groupby, prompt, provenance}``.
    """
    loaded = resolve_model(model)
    lists_task = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    template = get_template(TASK, variant=variant)
    top_k = top_k or loaded.card.top_k
    context_length = context_length or loaded.card.context_length
    max_new_tokens = max_new_tokens or template.stop.reserve_tokens
    chosen = order_cells(adata, seed=seed, groupby=groupby, n_cells=n_cells)
    context = pack_cell_context(adata, chosen, template, loaded.tokenizer, top_k=top_k,
                                context_length=context_length, reserve_tokens=max_new_tokens,
                                fields={"organism": organism_word(adata)})
    (text,), stats = cached_generate(
        loaded, [context.packed.text], task=TASK, max_new_tokens=max_new_tokens,
        stop=template.stop.stop_strings, do_sample=do_sample, temperature=temperature,
        no_repeat_ngram_size=template.stop.no_repeat_ngram_size,
        top_p=top_p, seed=seed if do_sample else None, batch_size=batch_size,
        progress=progress, cancel=cancel, cache=cache)
    prov = provenance(loaded, task=TASK, template=f"{TASK}:{template.variant}", top_k=top_k,
                      seed=seed, stats=stats, card_lists_task=lists_task,
                      params={"groupby": groupby, "n_cells": n_cells,
                              "max_new_tokens": max_new_tokens, "context_length": context_length,
                              "do_sample": do_sample, "temperature": temperature,
                              "top_p": top_p,
                              "no_repeat_ngram_size": template.stop.no_repeat_ngram_size})
    packed = context.packed
    summary = Summary(text=text, cells_used=context.cells, sentences=context.sentences,
                      n_cells_used=packed.n_cells_used, n_genes_per_cell=packed.n_genes_per_cell,
                      n_tokens=packed.n_tokens, budget=packed.budget,
                      context_length=context_length, prompt=packed.text,
                      groupby=groupby or "", provenance=prov)
    record(adata, SUMMARY_KEY, {
        "text": text, "cells_used": np.array(context.cells, dtype=object),
        "n_cells_used": packed.n_cells_used, "n_genes_per_cell": packed.n_genes_per_cell,
        "n_tokens": packed.n_tokens, "budget": packed.budget, "context_length": context_length,
        "groupby": groupby or "", "prompt": packed.text, "provenance": prov,
    })
    return summary
