"""Cell embeddings: the model's mean-pooled hidden states of each cell's text.

What is embedded is a choice (``text=``):

* ``'prompt'`` (default): the cell sentence inside the canonical cell-type-prediction prompt,
  as the reference package does. The released models only ever saw sentences inside prompts.
  Under causal attention the instruction tokens before the sentence have the same hidden
  states in every cell with the same ``num_genes``, so they shift those embeddings by the
  same vector and leave the differences between cells to the sentence and the cue.
* ``'sentence'``: the bare cell sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from c2s_engine.errors import TaskOptionError
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import get_template
from c2s_engine.tasks.runtime import (
    CacheLike,
    ModelLike,
    cached_embeddings,
    cell_sentences,
    check_task,
    organism_word,
    provenance,
    record,
    require_cells,
    resolve_model,
)

TASK = "embedding"
PROMPT_TASK = "cell_type_prediction"
TEXTS = ("prompt", "sentence")


@dataclass
class EmbeddingResult:
    """What :func:`embed` computed (also written into the AnnData).

    Attributes
    ----------
    embeddings
        ``(n_cells, hidden_size)`` float32, rows in ``obs`` order.
    key
        The ``obsm`` key they were written to.
    text, layer
        What was embedded and which hidden layer was pooled.
    provenance
        The record stored in ``uns['c2s']['embed']``.
    """

    embeddings: np.ndarray
    key: str
    text: str
    layer: int
    provenance: dict[str, Any]


def _check_layer(layer: int, n_layers: int) -> None:
    # hidden_states holds the token embeddings (0) then one entry per transformer layer.
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or \
            not -(n_layers + 1) <= layer <= n_layers:
        raise TaskOptionError(
            f"layer={layer!r} is not a hidden layer of this model (it has {n_layers} layers)",
            f"pass a layer from {-(n_layers + 1)} to {n_layers}; -1 (the last) is the default")


def embed(
    adata: AnnData,
    model: ModelLike = "demo",
    *,
    layer: int = -1,
    top_k: int | None = None,
    text: str = "prompt",
    key_added: str = "X_c2s",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> EmbeddingResult:
    """Embed every cell with the model (attention-masked mean of one hidden layer).

    Parameters
    ----------
    adata
        Prepared data (:func:`c2s_engine.pp.prepare`); its cell sentences are computed when
        missing or shorter than ``top_k``.
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    layer
        Index into the model's hidden states: 0 = token embeddings, 1..L the transformer
        layers, -1 the last (default).
    top_k
        Genes per sentence; the model card's ``top_k`` by default.
    text
        ``'prompt'`` or ``'sentence'`` (see the module docstring).
    key_added
        ``obsm`` key of the embeddings.
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` recomputes).
    allow_unsupported
        Run even if the model card does not list ``embedding`` (with a warning; the
        provenance says ``card_lists_task=False``).

    Returns
    -------
    EmbeddingResult

    Writes
    ------
    ``obsm[key_added]``
        ``(n_cells, hidden_size)`` float32 embeddings.
    ``uns['c2s']['embed']``
        Provenance (:func:`~c2s_engine.tasks.runtime.provenance`) with ``params``: ``layer``,
        ``text``, ``key_added``, ``hidden_size`` and, for ``text='prompt'``, ``organism``;
        ``template`` names the prompt (``''`` for bare sentences).

    Raises
    ------
    TaskNotSupportedError, TaskOptionError
    """
    loaded = resolve_model(model)
    supported = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    if text not in TEXTS:
        raise TaskOptionError(f"unknown text={text!r} to embed",
                              f"use one of {', '.join(repr(t) for t in TEXTS)}")
    _check_layer(layer, loaded.model.config.num_hidden_layers)

    top_k = top_k or loaded.card.top_k
    sentences = cell_sentences(adata, top_k)
    require_cells(sentences, "embed")
    organism = template_name = None
    if text == "prompt":
        organism = organism_word(adata)
        template = get_template(PROMPT_TASK)
        template_name = f"{PROMPT_TASK}:{template.variant}"
        texts = [template.format_prompt(num_genes=len(s.split()), organism=organism,
                                        cell_sentence=s) for s in sentences]
    else:
        texts = sentences
    embeddings, stats = cached_embeddings(loaded, texts, layer=int(layer), batch_size=batch_size,
                                          progress=progress, cancel=cancel, cache=cache)
    adata.obsm[key_added] = embeddings
    prov = provenance(
        loaded, task=TASK, template=template_name or "", top_k=top_k, seed=None, stats=stats,
        card_lists_task=supported,
        params={"layer": int(layer), "text": text, "key_added": key_added,
                "hidden_size": int(embeddings.shape[1]), "organism": organism})
    record(adata, "embed", prov)
    return EmbeddingResult(embeddings=embeddings, key=key_added, text=text, layer=int(layer),
                           provenance=prov)
