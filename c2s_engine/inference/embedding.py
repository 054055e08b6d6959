"""Text (cell sentence) embeddings: masked mean of one hidden layer.

Texts run in right-padded, length-bucketed batches. With right padding every real
token sits at the same positions as when its text runs alone and, the model being
causal, never attends to the padding after it; the mean then skips padding through
the attention mask, so a text's embedding does not depend on its batch neighbours.
Only the last position's logits are computed (``logits_to_keep=1``): the vocabulary
projection would otherwise dominate memory for large vocabularies such as Gemma's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from c2s_engine.inference.batching import (
    DEFAULT_BATCH_SIZE,
    ensure_pad_token,
    pad_batch,
    run_batches,
    tokenize,
    unpack_model,
)
from c2s_engine.inference.progress import CancelLike, ProgressFn


def embed(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    layer: int = -1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
) -> np.ndarray:
    """Embed every text as the attention-masked mean of a hidden layer.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer, or a ``LoadedModel`` and None.
    texts
        Texts to embed (typically cell sentences, or prompts holding them).
    layer
        Index into the model's ``hidden_states`` (0 = token embeddings, -1 = last layer,
        as transformers returns it).
    batch_size
        Texts per batch to start with; halved on out-of-memory.
    progress, cancel
        See :mod:`c2s_engine.inference.progress`.

    Returns
    -------
    np.ndarray
        ``(n_texts, hidden_size)`` float32, rows in input order.

    Raises
    ------
    CancelledError
        ``partial`` maps input index -> embedding vector of the finished texts.
    InsufficientMemoryError
        When one text alone does not fit in device memory.
    """
    model, tokenizer = unpack_model(model, tokenizer)
    ensure_pad_token(tokenizer)
    ids = tokenize(tokenizer, texts)

    def work(indices: list[int]) -> list[np.ndarray]:
        batch = pad_batch(tokenizer, [ids[i] for i in indices], "right", model.device)
        with torch.inference_mode():
            out = model(**batch, output_hidden_states=True, use_cache=False, logits_to_keep=1)
            hidden = out.hidden_states[layer].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return list(pooled.cpu().numpy())

    run = run_batches([len(x) for x in ids], work, batch_size=batch_size, progress=progress,
                      cancel=cancel, unit="texts")
    hidden_size = model.config.get_text_config().hidden_size
    return np.vstack(run.results).astype(np.float32) if run.results else \
        np.zeros((0, hidden_size), dtype=np.float32)
