"""Perturbation response prediction: control cells plus a perturbation name in, predicted
perturbed cells out, as an AnnData of expression rebuilt with the reverse transform.

Also holds what every cell-generating task here shares (:func:`generate_rounds`,
:func:`answer_tokens`, :func:`reconstructed_cells`); the spatial neighbour generation uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import (
    ContextBudgetError,
    ObsColumnError,
    SentenceError,
    TaskOptionError,
)
from c2s_engine.inference import CancelLike, ProgressFn
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.prompts import get_template
from c2s_engine.reverse import fit_reverse, reconstruct
from c2s_engine.tasks.neighborhoods import cell_positions
from c2s_engine.tasks.runtime import (
    CacheLike,
    CallStats,
    ModelLike,
    cached_generate,
    cell_sentences,
    check_task,
    ensure_ranks,
    provenance,
    record,
    resolve_model,
)

TASK = "perturbation_response"
#: Tokens allowed beyond the longest input cell when a generated cell's length is not given.
ANSWER_SLACK_TOKENS = 8


def answer_tokens(model, prompts: Sequence[str], cells: Sequence[str],
                  max_new_tokens: int | None) -> int:
    """Tokens to generate for cell-sentence answers, within the model's context window.

    By default a generated cell may be as long as the longest of ``cells`` (the input cells
    it is conditioned on) plus :data:`ANSWER_SLACK_TOKENS`; either way the answer is capped
    so that the longest prompt plus answer fits ``model.card.context_length``.

    Raises
    ------
    ContextBudgetError
        When the longest prompt alone fills the context.
    """
    tokenizer = model.tokenizer
    longest_prompt = max(len(ids) for ids in tokenizer(sorted(set(prompts)))["input_ids"])
    room = model.card.context_length - longest_prompt
    if room < 1:
        raise ContextBudgetError(
            f"the longest prompt takes {longest_prompt} tokens, leaving no room for an answer "
            f"in the {model.card.context_length}-token context of {model.name}",
            "use fewer genes per cell (top_k=...) or fewer context cells")
    if max_new_tokens is None:
        max_new_tokens = default_answer_tokens(model, cells)
    return min(int(max_new_tokens), room)


def default_answer_tokens(model, cells: Sequence[str]) -> int:
    """Tokens of the longest of ``cells`` plus :data:`ANSWER_SLACK_TOKENS`."""
    encoded = model.tokenizer(sorted(set(cells)), add_special_tokens=False)["input_ids"]
    return max(len(ids) for ids in encoded) + ANSWER_SLACK_TOKENS


def generate_rounds(model, prompts: Sequence[str], replicate: Sequence[int], *, task: str,
                    template, seed: int, do_sample: bool,
                    contrast_prompts: Sequence[str] | None = None, **options: Any
                    ) -> tuple[list[str], CallStats]:
    """Answers for prompts of which some repeat (the same cell drawn several times).

    Identical prompts are one cache entry, so a prompt's ``r``-th repeat is generated in
    round ``r`` with seed ``seed + r``: sampled repeats differ and every round is
    reproducible. Greedy decoding has no use for rounds (repeats would be identical).
    An answer names each gene once (``unique_words``, where the tokenizer keeps genes whole).
    Answers are cut with the template's stop rule. ``contrast_prompts`` (one per prompt) go
    with ``contrast_weight`` in ``options`` to :func:`~c2s_engine.tasks.runtime.cached_generate`.
    """
    replicate = np.asarray(replicate if do_sample else np.zeros(len(prompts), int))
    answers: list[str] = [""] * len(prompts)
    total = CallStats()
    batch_sizes = []
    for r in np.unique(replicate).tolist():
        rows = np.flatnonzero(replicate == r)
        contrast = None if contrast_prompts is None else [contrast_prompts[i] for i in rows]
        got, stats = cached_generate(model, [prompts[i] for i in rows], task=task,
                                     stop=template.stop.stop_strings, do_sample=do_sample,
                                     unique_words=True, seed=seed + r,
                                     contrast_prompts=contrast, **options)
        for i, answer in zip(rows.tolist(), got, strict=True):
            answers[i] = template.stop.cut(answer)
        total.n_items += stats.n_items
        total.n_cached += stats.n_cached
        total.seconds += stats.seconds
        batch_sizes.append(stats.batch_size)
    total.batch_size = min(batch_sizes)  # the smallest after any out-of-memory back-off
    return answers, total


def replicate_index(drawn: np.ndarray) -> np.ndarray:
    """For each entry, how many times the same value occurred before it (0 for the first)."""
    seen: dict[int, int] = {}
    out = np.empty(len(drawn), dtype=np.int64)
    for i, value in enumerate(drawn.tolist()):
        out[i] = seen.get(value, 0)
        seen[value] = out[i] + 1
    return out


def reconstructed_cells(adata: AnnData, sentences: Sequence[str], obs: pd.DataFrame,
                        top_k: int) -> AnnData:
    """Generated sentences as an expression AnnData over ``adata``'s genes.

    Uses the reverse transform stored in ``adata.uns['c2s']['reverse']``, fitting it with
    :func:`c2s_engine.reverse.fit_reverse` (and storing it in ``adata``) when absent or
    fitted on sentences shorter than ``top_k``.
    ``obs`` (one row per sentence) is joined to the reconstruction columns, and
    ``obs['cell_sentence']`` holds the sentence; the organism facts of ``adata`` are copied.
    """
    fit = adata.uns.get("c2s", {}).get("reverse")
    if fit is None or int(fit.get("top_k", 0)) < top_k:
        fit = fit_reverse(adata)
    out = reconstruct(pd.Series(list(sentences), index=obs.index), adata, fit)
    out.obs = pd.concat([obs, out.obs], axis=1)
    out.obs["cell_sentence"] = list(sentences)
    identifiers = adata.uns.get("c2s", {}).get("identifiers")
    if identifiers is not None:
        out.uns["c2s"]["identifiers"] = dict(identifiers)
    return out


def label_columns(adata: AnnData, exclude: Sequence[str] = ()) -> list[str]:
    """obs columns holding labels (categorical, text or bool), which a generated cell inherits.

    Numeric columns describe the measured cell (counts, QC) and are left out.
    """
    return [c for c in adata.obs.columns if c not in exclude and (
        isinstance(adata.obs[c].dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(adata.obs[c]) or pd.api.types.is_string_dtype(adata.obs[c])
        or pd.api.types.is_bool_dtype(adata.obs[c]))]


def _controls(adata: AnnData, cells: Any, control_key: str | None,
              control_value: str | None) -> np.ndarray:
    if control_key is None:
        if control_value is not None:
            raise TaskOptionError("control_value was given without control_key",
                                  "name the obs column too, e.g. control_key='condition'")
        return cell_positions(adata, cells)
    if cells is not None:
        raise TaskOptionError("both cells and control_key select the control cells",
                              "pass one of them")
    if control_key not in adata.obs:
        raise ObsColumnError(f"obs has no column {control_key!r} to select control cells",
                             f"use one of: {', '.join(map(str, adata.obs.columns)) or 'none'}")
    column = adata.obs[control_key].astype(str)
    mask = (column == str(control_value)).to_numpy()
    if not mask.any():
        values = ", ".join(sorted(column.unique())[:10])
        raise TaskOptionError(f"no cell has {control_key} == {control_value!r} (values: {values})",
                              "pass one of those values as the control value")
    return np.flatnonzero(mask)


def contrasting_sentences(adata: AnnData, drawn: np.ndarray, contrast: Any,
                          contrast_key: str | None, top_k: int, seed: int
                          ) -> tuple[list[str], int]:
    """One contrasting input sentence per drawn control (see :func:`predict_perturbation`),
    and the number of cells they were drawn from.

    ``contrast`` is an AnnData or a selection of ``adata``'s cells; with ``contrast_key`` a
    control gets a cell of another value of that column. Drawn with ``seed``, apart from the
    draw of the controls.
    """
    pool_data = contrast if isinstance(contrast, AnnData) else adata
    pool = (np.arange(pool_data.n_obs) if isinstance(contrast, AnnData)
            else cell_positions(adata, contrast))
    # Cells are drawn first and only the drawn ones written as sentences: a pool can be
    # every control of a large dataset while a call predicts a few dozen cells.
    usable = pool[ensure_ranks(pool_data, top_k)[pool, 0] >= 0]
    if usable.size == 0:
        raise SentenceError("no contrasting cell has an expressed gene",
                            "choose contrasting cells with nonzero expression")
    rng = np.random.default_rng([seed, 1])
    if contrast_key is None:
        chosen = rng.choice(usable, size=drawn.size)
    else:
        for data, what in ((adata, "the data"), (pool_data, "the contrasting cells")):
            if contrast_key not in data.obs:
                raise ObsColumnError(f"{what} have no obs column {contrast_key!r} to contrast by",
                                     "name a column both hold, e.g. the cell type")
        own = adata.obs[contrast_key].astype(str).to_numpy()[drawn]
        values = pool_data.obs[contrast_key].astype(str).to_numpy()[usable]
        chosen = np.empty(drawn.size, dtype=np.int64)
        for value in np.unique(own).tolist():
            rows = own == value
            candidates = usable[values != value]
            if candidates.size == 0:
                raise TaskOptionError(
                    f"no contrasting cell has a {contrast_key} other than {value!r}",
                    f"add cells of another {contrast_key} to the contrast, or contrast without "
                    "a key")
            chosen[rows] = rng.choice(candidates, size=int(rows.sum()))
    unique, back = np.unique(chosen, return_inverse=True)
    sentences = np.asarray(cell_sentences(pool_data, top_k, unique), dtype=object)
    return sentences[back].tolist(), int(pool.size)


def predict_perturbation(
    adata: AnnData,
    perturbation: str,
    model: ModelLike = "demo",
    *,
    cells: Any = None,
    control_key: str | None = None,
    control_value: str | None = None,
    n: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    variant: str | int = "canonical",
    contrast_weight: float = 0.0,
    contrast: Any = None,
    contrast_key: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
    allow_unsupported: bool = False,
) -> AnnData:
    """Predict how control cells respond to ``perturbation`` (one generated cell per draw).

    Each drawn control cell's sentence goes into the ``perturbation_response`` prompt; the
    generated perturbed sentence is turned back into expression with the reverse transform.

    Parameters
    ----------
    adata
        Prepared AnnData (:func:`c2s_engine.pp.prepare`) holding the control cells.
    perturbation
        The perturbation in words, e.g. ``"IFN-beta"``.
    model
        A LoadedModel or a model name (``"demo"``).
    cells
        Control cells: obs names, integer positions or a boolean mask (None: every cell).
    control_key, control_value
        Alternatively, controls are the cells with ``obs[control_key] == control_value``;
        that column is then not copied to the result (it would call the cells controls).
    n
        Cells to predict. None: every control cell once, in order. Otherwise ``n`` controls
        are drawn with ``np.random.default_rng(seed)``, without replacement when
        ``n <= n_controls``, with replacement otherwise.
    top_k
        Genes per control sentence (default: the model card's).
    seed
        Seeds the draw and the sampling (a cell drawn ``r`` times before uses ``seed + r``).
    do_sample, temperature, top_p
        Greedy by default (a repeated control then gives the same cell).
    max_new_tokens
        Default: the longest control sentence's tokens plus 8, capped by the context.
    variant
        Prompt wording (``'canonical'`` or a paraphrase number).
    contrast_weight, contrast, contrast_key
        Contrastive guidance, off at weight 0. Each answer is decoded with
        ``c + w * (c - n)``: ``c`` the model's log-probabilities for the prompt, ``n`` those
        for the same prompt holding another cell's sentence
        (:class:`~c2s_engine.inference.generation.ContrastivePromptGuidance`). What every
        input gets alike (a response shared by all cell types) is left as it is, and what is
        particular to this control (its cell type's genes) is sharpened, so fewer predictions
        drift towards the cell types the model saw perturbed. ``contrast`` gives the
        contrasting cells: an AnnData (e.g. control cells of other cell types), or cells of
        ``adata`` (names, positions or mask; default: the control cells). With
        ``contrast_key`` (an obs column, e.g. the cell type) a control is contrasted only
        with cells of another value. One contrasting cell is drawn per prediction with
        ``seed``. Decoding takes about twice as long.
    batch_size, progress, cancel, cache, allow_unsupported
        As for every task (see :mod:`c2s_engine.tasks.runtime`).

    Returns
    -------
    AnnData
        Predicted cells x ``adata``'s genes (float32 CSR, C2S-convention expression).
        obs: ``c2s_generated`` (True), ``c2s_perturbation``, ``c2s_control_cell`` (obs name
        of the source control), ``cell_sentence``, the reconstruction counts
        (``n_genes_reconstructed``, ``n_unknown_words``, ``n_repeated_genes``) and the
        label columns of the controls (categorical/text/bool obs columns, e.g. cell_type).
        uns['c2s']: ``perturb`` (provenance), ``reverse``, ``reconstruction``,
        ``identifiers``.

    Writes
    ------
    ``adata.uns['c2s']['perturb']``
        Provenance (:func:`~c2s_engine.tasks.runtime.provenance`) with params perturbation,
        n_cells, n_controls, n_unique_controls, n_empty_controls_skipped, control_key,
        control_value, do_sample, temperature, top_p, max_new_tokens, variant,
        contrast_weight, contrast_key, n_contrast_cells.
    ``adata.uns['c2s']['reverse']``
        The reverse-transform fit, when it was not there yet.

    Raises
    ------
    TaskNotSupportedError
        The model's card does not list ``perturbation_response`` (unless allowed).
    ObsColumnError, TaskOptionError
        An unknown control column, a control value no cell has, conflicting selections,
        an empty perturbation name or ``n == 0``.
    SentenceError
        No control cell with expressed genes, or unknown cells.
    """
    if not isinstance(perturbation, str) or not perturbation.strip():
        raise TaskOptionError("the perturbation name is empty",
                              "name the perturbation, e.g. perturbation='IFN-beta'")
    perturbation = perturbation.strip()
    if not contrast_weight >= 0:
        raise TaskOptionError(f"contrast_weight {contrast_weight} is negative",
                              "use 0 (no contrast) or a positive weight, e.g. 0.75")
    loaded = resolve_model(model)
    supported = check_task(loaded, TASK, allow_unsupported=allow_unsupported)
    top_k = int(top_k or loaded.card.top_k)
    template = get_template(TASK, variant=variant)

    controls = _controls(adata, cells, control_key, control_value)
    sentences = dict(zip(controls.tolist(), cell_sentences(adata, top_k, controls), strict=True))
    usable = np.array([c for c in controls.tolist() if sentences[c]], dtype=np.int64)
    if usable.size == 0:
        raise SentenceError(f"none of the {controls.size} control cells has an expressed gene",
                            "select control cells with nonzero expression")
    rng = np.random.default_rng(seed)
    drawn = usable if n is None else rng.choice(usable, size=int(n), replace=int(n) > usable.size)
    if drawn.size == 0:
        raise TaskOptionError("n is 0: no cell to predict", "pass n >= 1")

    def prompt(sentence: str) -> str:
        return template.format_prompt(num_genes=len(sentence.split()),
                                      perturbation_name=perturbation,
                                      control_cell_sentence=sentence)

    prompts = [prompt(sentences[c]) for c in drawn.tolist()]
    contrast_prompts, n_contrast = None, 0
    if contrast_weight:
        inputs, n_contrast = contrasting_sentences(
            adata, drawn, controls if contrast is None else contrast, contrast_key, top_k, seed)
        contrast_prompts = [prompt(s) for s in inputs]
    max_new_tokens = answer_tokens(loaded, [*prompts, *(contrast_prompts or [])],
                                   [sentences[c] for c in drawn.tolist()], max_new_tokens)
    answers, stats = generate_rounds(
        loaded, prompts, replicate_index(drawn), task=TASK, template=template, seed=seed,
        do_sample=do_sample, temperature=temperature, top_p=top_p,
        contrast_prompts=contrast_prompts, contrast_weight=float(contrast_weight),
        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
        cancel=cancel, cache=cache)

    ours = ("c2s_generated", "c2s_perturbation", "c2s_control_cell", "cell_sentence")
    inherited = label_columns(adata, exclude=(*ours, *([control_key] if control_key else [])))
    obs = adata.obs.iloc[drawn][inherited].copy()
    obs.index = pd.Index([f"c2s_perturbed_{i}" for i in range(drawn.size)])
    obs["c2s_generated"] = True
    obs["c2s_perturbation"] = perturbation
    obs["c2s_control_cell"] = adata.obs_names[drawn].astype(str).to_numpy()
    out = reconstructed_cells(adata, answers, obs, top_k)

    prov = provenance(
        loaded, task=TASK, template=f"{TASK}:{template.variant}", top_k=top_k, seed=seed,
        stats=stats, card_lists_task=supported,
        params={"perturbation": perturbation, "n_cells": int(drawn.size),
                "n_controls": int(controls.size), "n_unique_controls": int(np.unique(drawn).size),
                "n_empty_controls_skipped": int(controls.size - usable.size),
                "control_key": control_key,
                "control_value": None if control_value is None else str(control_value),
                "do_sample": bool(do_sample), "temperature": float(temperature),
                "top_p": float(top_p), "max_new_tokens": int(max_new_tokens),
                "variant": str(variant), "contrast_weight": float(contrast_weight),
                "contrast_key": contrast_key if contrast_weight else None,
                "n_contrast_cells": n_contrast})
    record(adata, "perturb", prov)
    record(out, "perturb", prov)
    return out
