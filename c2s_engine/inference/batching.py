"""Length-bucketed, memory-adaptive batching with progress and cancellation.

Every inference function splits its inputs the same way: items are sorted by token
length (longest first) so each batch holds neighbours of similar length and little
padding, the batches run one after the other, and the results are put back in input
order. Longest-first also means an out-of-memory error, if any, happens on the first
batch, so the batch size is settled before much work is done.

On ``torch.OutOfMemoryError`` the batch size is halved and the same batch retried; the
smaller size is kept for the rest of the call and reported. A single item that still
does not fit raises :class:`~c2s_engine.errors.InsufficientMemoryError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from c2s_engine.errors import CancelledError, InsufficientMemoryError
from c2s_engine.inference.progress import CancelLike, ProgressFn, Throughput, cancel_requested

R = TypeVar("R")

# Prompts per batch unless the caller says otherwise. On the CPU benchmark model, generation
# at 32 ran ~2x the cells/s of 8 (decoding reuses each weight read for every sequence of a
# batch); on CUDA an out-of-memory error halves it (see run_batches).
DEFAULT_BATCH_SIZE = 32


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Input indices ordered by descending length (ties keep input order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@dataclass
class BatchRun(Generic[R]):
    """Outcome of :func:`run_batches`.

    Attributes
    ----------
    results
        One result per item, in input order.
    batch_size
        Batch size in use at the end (smaller than asked after an out-of-memory back-off).
    seconds
        Wall time of the whole run.
    items_per_s
        Items per second over the whole run.
    """

    results: list[R]
    batch_size: int
    seconds: float
    items_per_s: float


def run_batches(
    lengths: Sequence[int],
    work: Callable[[list[int]], Sequence[R]],
    *,
    batch_size: int,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    unit: str = "cells",
) -> BatchRun[R]:
    """Run ``work`` over length-bucketed batches of item indices.

    Parameters
    ----------
    lengths
        Token length of every item; decides the bucketing.
    work
        Called with a list of input indices (neighbours in length); returns one result
        per index, in the same order.
    batch_size
        Items per batch to start with (at least 1).
    progress
        ``progress(done, total, items_per_s)`` after every batch.
    cancel
        Checked before every batch; see :mod:`c2s_engine.inference.progress`.
    unit
        Plural noun for the items, used in messages.

    Raises
    ------
    CancelledError
        When ``cancel`` fires; ``partial`` is ``{input_index: result}`` of finished items.
    InsufficientMemoryError
        When one item alone does not fit in device memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = longest_first(lengths)
    n = len(order)
    done: dict[int, R] = {}
    meter = Throughput(n, progress)
    start = 0
    while start < n:
        if cancel_requested(cancel):
            raise CancelledError(
                f"Cancelled after {len(done)} of {n} {unit}",
                "run the call again to compute the rest (finished results are kept in "
                "the error's 'partial' attribute)",
                done=len(done), total=n, partial=done,
            )
        indices = order[start:start + batch_size]
        try:
            outputs = work(indices)
        except torch.OutOfMemoryError as err:
            if batch_size == 1:
                raise InsufficientMemoryError(
                    f"The device ran out of memory on a single item of {unit} (batch size 1)",
                    "use fewer genes per cell or a shorter prompt, a lower precision or 4-bit "
                    "weights, a smaller model, or close other programs using the GPU",
                ) from err
            oom = True
        else:
            oom = False
        if oom:
            # Outside the except block, so the failed batch's tensors can be freed.
            batch_size = max(1, batch_size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        done.update(zip(indices, outputs, strict=True))
        start += len(indices)
        meter.advance(len(indices))
    return BatchRun(
        results=[done[i] for i in range(n)], batch_size=batch_size,
        seconds=meter.seconds, items_per_s=meter.per_second,
    )


def unpack_model(model, tokenizer):
    """Return ``(hf_model, tokenizer)`` from a model + tokenizer or a ``LoadedModel``.

    A ``LoadedModel`` (anything that is not a torch module but has ``.model`` and
    ``.tokenizer``) brings its own tokenizer, so ``tokenizer`` may then be None.
    """
    if not isinstance(model, torch.nn.Module) and hasattr(model, "model"):
        return model.model, tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError("a tokenizer is required when passing a bare Hugging Face model")
    return model, tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Give ``tokenizer`` a pad token (its EOS) when it has none, as batching needs one.

    The pad token only fills positions that the attention mask hides, so reusing EOS
    cannot change any result.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of every text, unpadded, with the tokenizer's own special tokens (BOS)."""
    return tokenizer(list(texts))["input_ids"] if len(texts) else []


def pad_batch(tokenizer, ids: Sequence[Sequence[int]], side: str,
              device: torch.device) -> dict[str, torch.Tensor]:
    """Pad token id lists to one tensor batch (``input_ids``, ``attention_mask``) on ``device``."""
    batch = tokenizer.pad({"input_ids": [list(x) for x in ids]}, padding_side=side,
                          return_tensors="pt")
    return {"input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device)}
