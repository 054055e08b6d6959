"""What every analysis task shares: the model, the card check, cell sentences, cached
model calls and provenance.

Each task function in :mod:`c2s_engine.tasks` takes an AnnData and a model (a
:class:`~c2s_engine.models.LoadedModel` or a name such as ``"demo"``), builds prompts from
the template registry, calls the inference core through :func:`cached_generate`,
:func:`cached_scores` or :func:`cached_embeddings` (so a rerun returns at once), writes its
results into the AnnData and records :func:`provenance` under ``uns['c2s'][<task>]``.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from anndata import AnnData

from c2s_engine.errors import C2SError, SentenceError
from c2s_engine.inference import (
    CancelLike,
    ProgressFn,
    ResultCache,
    call_key,
    embed,
    generate,
    score_labels,
)
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.models import LoadedModel, bundled_models, list_models, load_model

ModelLike = LoadedModel | str
CacheLike = ResultCache | bool | None


class TaskNotSupportedError(C2SError):
    """The model's card does not list the task, and the caller did not allow running it anyway."""


class TaskNotSupportedWarning(UserWarning):
    """A task runs on a model whose card does not list it; its results are marked as such."""


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, precision: str, device: str) -> LoadedModel:
    return load_model(name, precision=precision, device=device)


def resolve_model(model: ModelLike, *, precision: str = "auto", device: str = "auto") -> LoadedModel:
    """A loaded model: ``model`` itself, or the named model loaded once per process."""
    if isinstance(model, LoadedModel):
        return model
    return _load_cached(str(model), precision, device)


def models_supporting(task: str) -> list[str]:
    """Models whose card lists ``task`` (for "use one of ..." advice): first those shipped
    with C2S Studio (they load offline), then the released checkpoints."""
    shipped = [name for name, card in bundled_models().items() if card.supports(task)]
    return shipped + [card.name for card in list_models() if card.supports(task)]


def check_task(model: LoadedModel, task: str, *, allow_unsupported: bool = False) -> bool:
    """Whether ``model``'s card lists ``task``; refuse or warn when it does not.

    Raises
    ------
    TaskNotSupportedError
        When the card does not list the task and ``allow_unsupported`` is False.
    """
    if model.card.supports(task):
        return True
    others = models_supporting(task)
    listed = ", ".join(model.card.tasks) or "none"
    message = (f"model {model.name} was not trained for {task} (its card lists: {listed}); "
               "its answers would not mean anything")
    if not allow_unsupported:
        advice = f"use a model trained for it ({', '.join(others)})" if others else \
            "fine-tune a model for it with `c2s train sft`"
        raise TaskNotSupportedError(message, advice + ", or pass allow_unsupported=True to run "
                                    "anyway with the results marked as unsupported")
    warnings.warn(message + "; results are marked card_lists_task=False",
                  TaskNotSupportedWarning, stacklevel=3)
    return False


def organism_word(adata: AnnData, organism: str | None = None) -> str:
    """The organism words of the prompts ("Homo sapiens"/"Mus musculus")."""
    if organism:
        from c2s_engine.genes import resolve_organism

        return resolve_organism(organism)
    found = adata.uns.get("c2s", {}).get("identifiers", {}).get("organism", "")
    return found if found in ("Homo sapiens", "Mus musculus") else "Homo sapiens"


def ensure_ranks(adata: AnnData, top_k: int) -> np.ndarray:
    """The gene ranks in ``obsm['c2s_ranks']`` (-1 padded), (re)computed when absent or
    holding fewer than ``top_k`` genes; the data must have been prepared
    (:func:`c2s_engine.pp.prepare`)."""
    from c2s_engine.sentences import compute_sentences, stored_ranks

    have = adata.uns.get("c2s", {}).get("sentences", {})
    if "c2s_ranks" not in adata.obsm or int(have.get("top_k", 0)) < top_k:
        compute_sentences(adata, top_k=top_k)
    return stored_ranks(adata)


def cell_sentences(adata: AnnData, top_k: int, cells: Sequence[int] | None = None) -> list[str]:
    """Sentences of ``cells`` (positions; all when None) with at most ``top_k`` genes.

    Ranks are reused or (re)computed as :func:`ensure_ranks` says.
    """
    from c2s_engine.sentences import get_sentences

    ensure_ranks(adata, top_k)
    index = None if cells is None else adata.obs_names[np.asarray(cells)]
    return get_sentences(adata, n_genes=top_k, cells=index)


def require_cells(sentences: Sequence[str], what: str) -> None:
    """Refuse empty input with a message that names it."""
    if not sentences:
        raise SentenceError(f"no cells to {what}", "select at least one cell")


def result_cache(cache: CacheLike) -> ResultCache | None:
    """The cache a task uses: None when disabled (``cache=False``), else the given or default one."""
    if cache is False:
        return None
    if cache is None or cache is True:
        return ResultCache()
    return cache


@dataclass
class CallStats:
    """How a batch of model calls went (shown in the UI and stored in provenance)."""

    n_items: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    batch_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.n_items / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"n_items": self.n_items, "n_cached": self.n_cached,
                "seconds": round(self.seconds, 3), "batch_size": self.batch_size,
                "items_per_s": round(self.items_per_s, 2), **self.extra}


#: Joins a prompt and its contrasting prompt into one cache item (no template holds it).
_PAIR = "\x1f"


def cached_generate(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    task: str,
    max_new_tokens: int,
    stop: Sequence[str] | None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    no_repeat_ngram_size: int = 0,
    unique_words: bool = False,
    seed: int | None = None,
    contrast_prompts: Sequence[str] | None = None,
    contrast_weight: float = 0.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
) -> tuple[list[str], CallStats]:
    """Answers for ``prompts`` (input order), computing only prompts not in the cache.

    Sampled generation is cached too: the key holds the seed, so the same seed returns
    the same answers and another seed computes new ones. With contrastive guidance
    (``contrast_prompts``, ``contrast_weight``; see
    :class:`~c2s_engine.inference.generation.ContrastivePromptGuidance`) a cache item is the
    pair of a prompt and its contrasting prompt.
    """
    contrast = list(contrast_prompts) if contrast_prompts is not None and contrast_weight else None
    params = {"max_new_tokens": max_new_tokens, "stop": list(stop or []), "do_sample": do_sample,
              "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed,
              "precision": model.precision}
    if no_repeat_ngram_size:  # only when set: unguarded calls keep their cache keys
        params["no_repeat_ngram_size"] = no_repeat_ngram_size
    if unique_words:
        params["unique_words"] = True
    items = list(prompts)
    if contrast is not None:
        params["contrast_weight"] = float(contrast_weight)
        items = [f"{p}{_PAIR}{c}" for p, c in zip(prompts, contrast, strict=True)]
    stats = CallStats(n_items=len(prompts), batch_size=batch_size)

    def compute(missing: list[str]) -> list[str]:
        pairs = [m.split(_PAIR) for m in missing] if contrast is not None else None
        result = generate(model, None, [p[0] for p in pairs] if pairs else missing,
                          max_new_tokens=max_new_tokens, stop=stop,
                          do_sample=do_sample, temperature=temperature, top_p=top_p,
                          top_k=top_k, no_repeat_ngram_size=no_repeat_ngram_size,
                          unique_words=unique_words, seed=seed,
                          contrast_prompts=[p[1] for p in pairs] if pairs else None,
                          contrast_weight=contrast_weight,
                          batch_size=batch_size, progress=progress, cancel=cancel)
        stats.batch_size = result.batch_size
        return result.answers

    start = time.perf_counter()
    store = result_cache(cache)
    if store is None:
        answers = compute(items)
    else:
        key = call_key(model.name, model.revision, f"generate:{task}", params)
        answers, stats.n_cached = store.map(key, items, compute)
    stats.seconds = time.perf_counter() - start
    return [str(a) for a in answers], stats


def cached_scores(
    model: LoadedModel,
    prompts: Sequence[str],
    candidates: Sequence[str],
    *,
    task: str,
    format_candidate=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
) -> tuple[np.ndarray, CallStats]:
    """Log-likelihood matrix (prompts x candidates) of each candidate answer after each prompt."""
    from c2s_engine.inference import label_response

    fmt = format_candidate or label_response
    params = {"candidates": [fmt(c) for c in candidates], "precision": model.precision}
    stats = CallStats(n_items=len(prompts), batch_size=batch_size)

    def compute(missing: list[str]) -> list[np.ndarray]:
        result = score_labels(model, None, missing, list(candidates), format_candidate=fmt,
                              batch_size=batch_size, progress=progress, cancel=cancel)
        stats.batch_size = result.batch_size
        return [np.asarray(row, dtype=np.float64) for row in result.loglik]

    start = time.perf_counter()
    store = result_cache(cache)
    if store is None:
        rows = compute(list(prompts))
    else:
        key = call_key(model.name, model.revision, f"score:{task}", params)
        rows, stats.n_cached = store.map(key, list(prompts), compute)
    stats.seconds = time.perf_counter() - start
    loglik = np.vstack(rows) if rows else np.zeros((0, len(candidates)))
    return loglik, stats


def cached_embeddings(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    layer: int = -1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    cache: CacheLike = None,
) -> tuple[np.ndarray, CallStats]:
    """Mean-pooled hidden states of ``layer`` for every text (n_texts x hidden)."""
    stats = CallStats(n_items=len(texts), batch_size=batch_size)

    def compute(missing: list[str]) -> list[np.ndarray]:
        return list(embed(model, None, missing, layer=layer, batch_size=batch_size,
                          progress=progress, cancel=cancel))

    start = time.perf_counter()
    store = result_cache(cache)
    if store is None:
        rows = compute(list(texts))
    else:
        key = call_key(model.name, model.revision, "embed",
                       {"layer": layer, "precision": model.precision})
        rows, stats.n_cached = store.map(key, list(texts), compute)
    stats.seconds = time.perf_counter() - start
    width = model.model.config.hidden_size
    return (np.vstack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)), stats


def provenance(
    model: LoadedModel,
    *,
    task: str,
    template: str,
    top_k: int | None,
    seed: int | None,
    stats: CallStats | None = None,
    card_lists_task: bool = True,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """How a result was made, in ``.h5ad``-safe values (no None).

    Keys: model, revision, precision, device, task, template, top_k, seed (-1 when none),
    card_lists_task, time (UTC ISO 8601), version, calls (timing and cache hits) and params.
    """
    from c2s_engine import __version__

    record: dict[str, Any] = {
        "model": model.name,
        "revision": model.revision,
        "precision": model.precision,
        "device": model.device,
        "task": task,
        "template": template,
        "top_k": -1 if top_k is None else int(top_k),
        "seed": -1 if seed is None else int(seed),
        "card_lists_task": bool(card_lists_task),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
    }
    if model.notices:
        record["notices"] = list(model.notices)
    if stats is not None:
        record["calls"] = stats.to_dict()
    if params:
        record["params"] = {k: v for k, v in params.items() if v is not None}
    return record


def record(adata: AnnData, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` as ``adata.uns['c2s'][key]`` (creating ``uns['c2s']``)."""
    adata.uns.setdefault("c2s", {})[key] = value
