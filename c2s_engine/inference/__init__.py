"""Inference core: batched generation, label scoring, embeddings and a result cache.

Every function takes a Hugging Face causal LM and its tokenizer (or a ``LoadedModel``
and None) plus a list of texts, runs length-bucketed batches that shrink on
out-of-memory, reports ``progress(done, total, cells_per_s)`` and stops between batches
when ``cancel`` fires (raising :class:`~c2s_engine.errors.CancelledError` holding the
finished results). :class:`ResultCache` stores results per item on disk.
"""

from c2s_engine.inference.batching import BatchRun, run_batches
from c2s_engine.inference.cache import (
    CACHE_ENV,
    CacheKey,
    ResultCache,
    call_key,
    canonical_json,
    content_hash,
    default_cache_dir,
)
from c2s_engine.inference.embedding import embed
from c2s_engine.inference.generation import (
    DEFAULT_STOP,
    Generated,
    GenerationResult,
    cut_at_stop,
    generate,
)
from c2s_engine.inference.progress import CancelLike, ProgressFn, Throughput, cancel_requested
from c2s_engine.inference.scoring import ScoreResult, label_response, score_labels

__all__ = [
    "CACHE_ENV",
    "DEFAULT_STOP",
    "BatchRun",
    "CacheKey",
    "CancelLike",
    "Generated",
    "GenerationResult",
    "ProgressFn",
    "ResultCache",
    "ScoreResult",
    "Throughput",
    "call_key",
    "cancel_requested",
    "canonical_json",
    "content_hash",
    "cut_at_stop",
    "default_cache_dir",
    "embed",
    "generate",
    "label_response",
    "run_batches",
    "score_labels",
]
