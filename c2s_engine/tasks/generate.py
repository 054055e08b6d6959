"""Conditional cell generation: new cells of a cell type or tissue, as expression.

The model writes cell sentences; :func:`c2s_engine.reverse.reconstruct` turns them into
expression over the genes of a *reference* dataset with that dataset's reverse fit (the fit is
computed and stored in the reference when missing), so the result is an AnnData that sits next
to the real data.

Decisions:

* Cell types use the ``cell_type_generation`` prompt, one cell per prompt. Tissues use the
  multi-cell ``tissue_conditioned_sample_generation`` prompt with ``num_cells=1`` (the released
  models have no single-cell tissue prompt), so each prompt still yields one independent cell;
  the answer's ``Cell 1:`` label is dropped and it ends at the first period that ends a line.
* Sampling is on by default (greedy decoding would write ``n`` identical cells). The ``n``
  prompts of a condition are identical texts, so the per-prompt result cache would collapse
  them; the whole request (every prompt in order, with the sampling settings and seed) is
  cached as one item instead, and a repeated call returns the cells first generated for it.
* ``max_new_tokens`` defaults to what ``top_k`` genes need with the model's own tokenizer,
  measured on the reference's sentences (see :func:`default_max_new_tokens`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import ContextBudgetError, TaskOptionError
from c2s_engine.inference import CancelLike, ProgressFn, call_key, canonical_json
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import StopRule, get_template
from c2s_engine.reverse import ReverseFit, fit_reverse, reconstruct
from c2s_engine.tasks.runtime import (
    CacheLike,
    CallStats,
    ModelLike,
    cached_generate,
    cell_sentences,
    check_task,
    organism_word,
    provenance,
    record,
    resolve_model,
    result_cache,
)

TASKS = {"cell_type": "cell_type_generation", "tissue": "tissue_conditioned_sample_generation"}
# Reference sentences tokenized to measure tokens per gene (evenly spaced cells).
MEASURE_CELLS = 256
# A tissue answer is "Cell 1:\n<genes>.\n"; it ends at the period closing the first cell.
_TISSUE_STOP = (".\n",)
_CELL_LABEL = re.compile(r"^\s*Cell\s+\d+\s*:\s*")
_SENTENCE_END = StopRule("period", "a cell sentence ends at the first period ending a word", 0)


def default_max_new_tokens(tokenizer, sentences: Sequence[str], top_k: int) -> int:
    """Tokens to generate for a sentence of ``top_k`` genes with ``tokenizer``.

    The 95th percentile of tokens per gene over ``sentences`` (each tokenized as it follows
    the prompt, after a space), times ``top_k``, plus 10% and 8 tokens for the closing period,
    end-of-sequence and a ``Cell 1:`` label. Without usable sentences, 3 tokens per gene.
    """
    sentences = [s for s in sentences if s]
    if sentences:
        ids = tokenizer([" " + s for s in sentences], add_special_tokens=False)["input_ids"]
        per_gene = np.quantile([len(t) / len(s.split()) for t, s in
                                zip(ids, sentences, strict=True)], 0.95)
    else:
        per_gene = 3.0
    # Rounded first so float noise (22.000000000000004) does not add a token.
    return math.ceil(round(top_k * float(per_gene) * 1.1, 6)) + 8


def _conditions(cell_type: str | Sequence[str] | None,
                tissue: str | Sequence[str] | None) -> tuple[str, list[str]]:
    if (cell_type is None) == (tissue is None):
        raise TaskOptionError("generate_cells needs exactly one of cell_type and tissue",
                              "pass cell_type='T cell' (or a list), or tissue='lung'")
    kind, given = ("cell_type", cell_type) if cell_type is not None else ("tissue", tissue)
    values = [given] if isinstance(given, str) else list(given)
    conditions = list(dict.fromkeys(" ".join(str(v).split()) for v in values))
    if not conditions or "" in conditions:
        raise TaskOptionError(f"empty {kind.replace('_', ' ')} to generate cells of",
                              f"pass a non-empty {kind}")
    return kind, conditions


def sentence_from_answer(answer: str, kind: str) -> str:
    """The cell sentence in a generated answer.

    For ``kind='tissue'`` the leading ``Cell 1:`` label is dropped; the sentence ends before
    the first period that ends a word (or a newline).
    """
    if kind == "tissue":
        answer = _CELL_LABEL.sub("", answer, count=1)
    return _SENTENCE_END.cut(answer)


def _reverse_fit(reference: AnnData, top_k: int) -> ReverseFit:
    stored = reference.uns.get("c2s", {}).get("reverse")
    if stored is not None and int(stored.get("top_k", 0)) >= top_k:
        return ReverseFit.from_dict(stored)
    return fit_reverse(reference)


def generate_cells(
    reference: AnnData,
    model: ModelLike = "demo",
    *,
    cell_type: str | Sequence[str] | None = None,
    tissue: str | Sequence[str] | None = None,
    n: int = 10,
    top_k: int | None = None,
    organism: str | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    sampling_top_k: int = 0,
    seed: int | None = 0,
    max_new_tokens: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> AnnData:
    """Generate ``n`` cells per cell type (or tissue) and reconstruct their expression.

    Parameters
    ----------
    reference
        Prepared data (:func:`c2s_engine.pp.prepare`) giving the gene vocabulary (its
        ``var``), the reverse fit and the organism. Its sentences are computed when missing
        and its reverse fit is stored in ``uns['c2s']['reverse']`` when missing or fitted on
        fewer than ``top_k`` genes.
    model
        A :class:`~c2s_engine.models.LoadedModel` or a model name (``"demo"``).
    cell_type, tissue
        The condition(s): one label or a list; exactly one of the two.
    n
        Cells per condition.
    top_k
        Genes asked for per cell (``num_genes`` of the prompt); the model card's by default.
    organism
        Organism of the prompt; by default the reference's (``'human'``/``'mouse'`` accepted).
    do_sample, temperature, top_p, sampling_top_k
        Sampling controls (``sampling_top_k=0`` and ``top_p=1.0`` disable those filters).
        With ``do_sample=False`` the ``n`` cells of a condition are identical.
    seed
        Seed of the sampling: the same seed, settings and batch size give the same cells.
        ``None`` draws fresh cells on every call (such calls are not cached).
    max_new_tokens
        Longest answer; by default :func:`default_max_new_tokens` on the reference, capped
        so prompt and answer fit the model's context.
    batch_size, progress, cancel, cache
        Passed to the inference core (``cache=False`` regenerates).
    allow_unsupported
        Run even if the model card does not list the generation task (with a warning; the
        provenance says ``card_lists_task=False``).

    Returns
    -------
    AnnData
        ``n * n_conditions`` cells (``c2s_gen_0`` ...) x the reference's genes (``var``
        copied), ``X`` float32 CSR of reconstructed C2S-convention expression.
        ``obs``: ``c2s_generated`` (True), ``c2s_condition`` (categorical, conditions in the
        order given), ``c2s_sample`` (0..n-1 within its condition), ``cell_sentence`` (the
        generated sentence), ``n_genes_reconstructed``, ``n_unknown_words`` and
        ``n_repeated_genes``. ``uns['c2s']``: ``reverse`` and ``reconstruction`` (see
        :func:`~c2s_engine.reverse.reconstruct`), ``identifiers`` copied from the reference,
        and ``generate``, the provenance, whose ``params`` hold ``condition_kind``,
        ``conditions``, ``n``, ``organism``, the sampling settings, ``max_new_tokens`` and
        ``max_new_tokens_source`` (``'given'``/``'measured'``).

    Raises
    ------
    TaskNotSupportedError, TaskOptionError, ContextBudgetError
    """
    loaded = resolve_model(model)
    kind, conditions = _conditions(cell_type, tissue)
    task = TASKS[kind]
    supported = check_task(loaded, task, allow_unsupported=allow_unsupported)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise TaskOptionError(f"n must be a whole number of cells of at least 1, got {n!r}",
                              "pass e.g. n=10 cells per condition")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise TaskOptionError(f"max_new_tokens must be at least 1, got {max_new_tokens}",
                              "pass a positive number or leave it out to size it from top_k")

    top_k = top_k or loaded.card.top_k
    organism = organism_word(reference, organism)
    template = get_template(task)
    fields: dict[str, Any] = {"num_genes": top_k, "organism": organism, "num_cells": 1}
    prompts = [template.format_prompt(**fields, **{kind: c}) for c in conditions for _ in range(n)]
    measured = cell_sentences(reference, top_k, np.unique(np.linspace(
        0, reference.n_obs - 1, min(MEASURE_CELLS, reference.n_obs)).astype(np.int64)))
    fit = _reverse_fit(reference, top_k)
    source = "given"
    if max_new_tokens is None:
        source = "measured"
        longest_prompt = max(len(ids) for ids in loaded.tokenizer(
            list(dict.fromkeys(prompts)))["input_ids"])
        room = loaded.card.context_length - longest_prompt
        if room < 1:
            raise ContextBudgetError(
                f"the generation prompt alone takes {longest_prompt} tokens, the model's whole "
                f"context ({loaded.card.context_length})", "use shorter condition labels")
        max_new_tokens = min(default_max_new_tokens(loaded.tokenizer, measured, top_k), room)

    stop = template.stop.stop_strings if kind == "cell_type" else _TISSUE_STOP
    settings = {"max_new_tokens": max_new_tokens, "stop": list(stop), "do_sample": do_sample,
                "temperature": temperature, "top_p": top_p, "top_k": sampling_top_k,
                "seed": seed, "precision": loaded.precision, "unique_words": True}
    runs: list[CallStats] = []

    def run(_: list[str]) -> list[list[str]]:
        answers, stats = cached_generate(
            loaded, prompts, task=task, max_new_tokens=max_new_tokens, stop=stop,
            do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=sampling_top_k,
            unique_words=True, seed=seed, batch_size=batch_size, progress=progress,
            cancel=cancel, cache=False)
        runs.append(stats)
        return [answers]

    start = time.perf_counter()
    store = result_cache(cache) if seed is not None else None
    if store is None:
        answers = run([])[0]
    else:
        key = call_key(loaded.name, loaded.revision, f"generate_cells:{task}", settings)
        answers = store.map(key, [canonical_json(prompts)], run)[0][0]
    stats = runs[0] if runs else CallStats(n_items=len(prompts), n_cached=len(prompts),
                                           batch_size=batch_size)
    stats.seconds = time.perf_counter() - start

    sentences = [sentence_from_answer(a, kind) for a in answers]
    names = pd.Index([f"c2s_gen_{i}" for i in range(len(prompts))])
    out = reconstruct(pd.Series(sentences, index=names), reference, fit)
    out.obs["c2s_generated"] = True
    out.obs["c2s_condition"] = pd.Categorical(np.repeat(conditions, n), categories=conditions)
    out.obs["c2s_sample"] = np.tile(np.arange(n, dtype=np.int64), len(conditions))
    out.obs["cell_sentence"] = np.asarray(sentences, dtype=object)
    identifiers = reference.uns.get("c2s", {}).get("identifiers")
    if identifiers is not None:
        out.uns["c2s"]["identifiers"] = dict(identifiers)
    record(out, "generate", provenance(
        loaded, task=task, template=f"{task}:{template.variant}", top_k=top_k, seed=seed,
        stats=stats, card_lists_task=supported,
        params={"condition_kind": kind, "conditions": conditions, "n": int(n),
                "organism": organism, "do_sample": do_sample, "temperature": temperature,
                "top_p": top_p, "sampling_top_k": sampling_top_k,
                "max_new_tokens": int(max_new_tokens), "max_new_tokens_source": source,
                "reference_n_obs": int(reference.n_obs)}))
    return out
