"""Cluster captions: a short description per cluster, written by the model from sampled cells.

For every cluster of ``groupby``, up to ``n_cells`` of its cells are drawn with the seed,
their sentences packed into the ``cluster_captioning`` prompt (as many whole cells as fit
the model's context, leaving ``max_new_tokens`` for the caption) and the model writes the
caption. The evidence kept next to each caption is what a reader needs to judge it: the
cells in the prompt, the genes most of them share, and the cluster's marker genes from
``sc.tl.rank_genes_groups``. Users may rewrite a caption (:func:`set_caption`); the edit is
marked so it is never mistaken for model output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import TaskOptionError
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import get_template
from c2s_engine.tasks.facts import (
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

TASK = "cluster_captioning"
CAPTIONS_KEY = "captions"
PROVENANCE_KEY = "caption_clusters"
N_SHARED_GENES = 10


@dataclass
class ClusterCaption:
    """One cluster's caption and its evidence.

    Attributes
    ----------
    cluster
        Cluster name (a value of the ``groupby`` column).
    caption
        The model's caption (or the user's, when ``edited``).
    n_cells
        Cells in the cluster.
    cells_used
        obs names of the cells in the prompt, in prompt order.
    top_genes
        Genes in the sentences of the most cells used (most shared first).
    markers
        The cluster's marker genes (rank_genes_groups, cluster vs rest).
    prompt
        The exact prompt the model saw.
    n_tokens, budget
        Prompt tokens and the budget they had to fit (context minus ``max_new_tokens``).
    edited
        Whether a user replaced the model's caption (:func:`set_caption`).
    """

    cluster: str
    caption: str
    n_cells: int
    cells_used: list[str]
    top_genes: list[str]
    markers: list[str]
    prompt: str
    n_tokens: int
    budget: int
    edited: bool = False


@dataclass
class CaptionResult:
    """What :func:`caption_clusters` wrote, for the UI."""

    groupby: str
    clusters: list[ClusterCaption]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def captions(self) -> dict[str, str]:
        """Caption per cluster name."""
        return {c.cluster: c.caption for c in self.clusters}


def caption_clusters(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    groupby: str,
    n_cells: int = 10,
    top_k: int | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    n_markers: int = 5,
    context_length: int | None = None,
    variant: int | str = "canonical",
    key_added: str = "c2s_caption",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> CaptionResult:
    """Write a caption for every cluster of ``groupby`` from a few of its cells.

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`).
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    groupby
        obs column of the clusters; every non-empty cluster gets a caption.
    n_cells
        Cells drawn per cluster (fewer when the cluster is smaller or they do not all fit).
    top_k
        Genes per cell sentence; the model card's ``top_k`` by default.
    seed
        Draws the cells (and seeds sampling when ``do_sample``).
    max_new_tokens
        Longest caption in tokens, kept free in the context; default the template's
        ``reserve_tokens`` (256).
    n_markers
        Marker genes per cluster kept as evidence.
    context_length
        Token budget of prompt plus caption; the model card's ``context_length`` by default.
    variant
        Prompt wording (``'canonical'`` or a paraphrase number).
    key_added
        obs column of the per-cell caption.
    do_sample, temperature, top_p
        Sampling controls (greedy by default).
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` recomputes).
    allow_unsupported
        Run even if the model card does not list ``cluster_captioning`` (with a warning; the
        provenance says ``card_lists_task=False``).

    Returns
    -------
    CaptionResult

    Writes
    ------
    ``adata.obs[key_added]``
        Categorical: the caption of each cell's cluster (missing for cells without one).
    ``adata.uns['c2s']['captions']``
        ``{groupby, key_added, clusters}``; ``clusters`` maps the position ('0', '1', ...;
        names may hold '/', which h5ad keys cannot) to ``{cluster, caption, edited, n_cells,
        cells_used, top_genes, markers, n_tokens, budget}``. Read it with
        :func:`captions_table`.
    ``adata.uns['c2s']['caption_clusters']``
        Provenance (:func:`~c2s_engine.tasks.runtime.provenance`).
    ``adata.uns['c2s']['markers']``
        Cached marker genes (:func:`~c2s_engine.tasks.facts.marker_genes`).
    """
    loaded = resolve_model(model)
    lists_task = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    template = get_template(TASK, variant=variant)
    top_k = top_k or loaded.card.top_k
    context_length = context_length or loaded.card.context_length
    max_new_tokens = max_new_tokens or template.stop.reserve_tokens
    facts = dataset_facts(adata, groupby, n_markers=n_markers)
    labels = group_labels(adata, groupby).to_numpy()
    fields = {"organism": organism_word(adata)}

    contexts = []
    for cluster in facts.clusters:
        members = np.flatnonzero(labels == cluster.name)
        chosen = order_cells(adata, seed=seed, cells=members, n_cells=n_cells)
        contexts.append(pack_cell_context(adata, chosen, template, loaded.tokenizer,
                                          top_k=top_k, context_length=context_length,
                                          reserve_tokens=max_new_tokens, fields=fields))
    answers, stats = cached_generate(
        loaded, [c.packed.text for c in contexts], task=TASK, max_new_tokens=max_new_tokens,
        stop=template.stop.stop_strings, do_sample=do_sample, temperature=temperature,
        no_repeat_ngram_size=template.stop.no_repeat_ngram_size,
        top_p=top_p, seed=seed if do_sample else None, batch_size=batch_size,
        progress=progress, cancel=cancel, cache=cache)

    captions = [
        ClusterCaption(cluster=cluster.name, caption=answer, n_cells=cluster.n_cells,
                       cells_used=context.cells, top_genes=context.shared_genes(N_SHARED_GENES),
                       markers=cluster.markers, prompt=context.packed.text,
                       n_tokens=context.packed.n_tokens, budget=context.packed.budget)
        for cluster, context, answer in zip(facts.clusters, contexts, answers, strict=True)
    ]
    record(adata, CAPTIONS_KEY, {
        "groupby": groupby, "key_added": key_added,
        "clusters": {str(i): _stored(c) for i, c in enumerate(captions)},
    })
    _write_obs(adata, groupby, key_added, {c.cluster: c.caption for c in captions})
    prov = provenance(loaded, task=TASK, template=f"{TASK}:{template.variant}", top_k=top_k,
                      seed=seed, stats=stats, card_lists_task=lists_task,
                      params={"groupby": groupby, "n_cells": n_cells,
                              "max_new_tokens": max_new_tokens, "context_length": context_length,
                              "do_sample": do_sample, "temperature": temperature,
                              "top_p": top_p,
                              "no_repeat_ngram_size": template.stop.no_repeat_ngram_size})
    record(adata, PROVENANCE_KEY, prov)
    return CaptionResult(groupby=groupby, clusters=captions, provenance=prov)


def _stored(caption: ClusterCaption) -> dict[str, Any]:
    return {"cluster": caption.cluster, "caption": caption.caption, "edited": caption.edited,
            "n_cells": caption.n_cells, "n_tokens": caption.n_tokens, "budget": caption.budget,
            "cells_used": np.array(caption.cells_used, dtype=object),
            "top_genes": np.array(caption.top_genes, dtype=object),
            "markers": np.array(caption.markers, dtype=object)}


def _write_obs(adata: AnnData, groupby: str, key: str, captions: dict[str, str]) -> None:
    labels = group_labels(adata, groupby)
    adata.obs[key] = pd.Categorical(labels.map(captions.get, na_action="ignore").to_numpy())


def _stored_captions(adata: AnnData) -> dict[str, Any]:
    stored = adata.uns.get("c2s", {}).get(CAPTIONS_KEY)
    if not stored:
        raise TaskOptionError("this AnnData has no cluster captions yet",
                              "run caption_clusters(adata, groupby=...) (or `c2s caption`) first")
    return stored


def _entries(stored: dict[str, Any]) -> list[dict[str, Any]]:
    return [stored["clusters"][k] for k in sorted(stored["clusters"], key=int)]


def captions_table(adata: AnnData) -> pd.DataFrame:
    """The stored captions, one row per cluster, user edits included.

    Columns: cluster, n_cells, caption, edited, top_genes and cells_used (lists of str).
    """
    rows = [{"cluster": str(e["cluster"]), "n_cells": int(e["n_cells"]),
             "caption": str(e["caption"]), "edited": bool(e["edited"]),
             "top_genes": [str(g) for g in e["top_genes"]],
             "cells_used": [str(c) for c in e["cells_used"]]}
            for e in _entries(_stored_captions(adata))]
    return pd.DataFrame(rows, columns=["cluster", "n_cells", "caption", "edited", "top_genes",
                                       "cells_used"])


def set_caption(adata: AnnData, cluster: str, text: str) -> None:
    """Replace the caption of ``cluster`` with the user's ``text`` and mark it as edited.

    Updates ``uns['c2s']['captions']`` (``caption``, ``edited=True``, ``edited_time``) and
    the per-cell column written by :func:`caption_clusters`.

    Raises
    ------
    TaskOptionError
        When there are no captions yet or ``text`` is empty.
    GroupingError
        When ``cluster`` has no caption (the message lists the clusters).
    """
    stored = _stored_captions(adata)
    text = " ".join(str(text).split())
    if not text:
        raise TaskOptionError(f"the new caption of cluster {cluster!r} is empty",
                              "write the caption text")
    entries = _entries(stored)
    match = [e for e in entries if str(e["cluster"]) == str(cluster)]
    if not match:
        raise unknown_cluster_error(cluster, str(stored["groupby"]),
                                    [str(e["cluster"]) for e in entries])
    match[0].update(caption=text, edited=True,
                    edited_time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_obs(adata, str(stored["groupby"]), str(stored["key_added"]),
               {str(e["cluster"]): str(e["caption"]) for e in entries})
