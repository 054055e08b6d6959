"""Rank candidate labels by their log-likelihood after each prompt.

How it runs (correct for any tokenizer, and the prompt is read once, not once per label):

1. Token boundary. A candidate's tokens are those of ``prompt + candidate`` past their
   common prefix with the tokens of ``prompt`` alone; when the tokenizer merges the last
   prompt characters with the candidate, the merged tokens are scored and the prompt
   tokens before them condition the score, exactly as a plain forward pass over
   ``prompt + candidate`` would. Tokenizing every prompt+candidate string in full would
   cost more than the model on large datasets, so only the prompt's last
   :data:`TAIL_TOKENS` tokens are re-tokenized with each candidate (once per distinct
   prompt ending, which is one cue per template); a prompt whose tail does not
   tokenize the same on its own falls back to tokenizing the whole text.
2. One forward pass per batch of left-padded prompts, up to the last token shared by all
   candidates, keeping its KV cache and only the last position's logits.
3. The cache rows are repeated for every (prompt, candidate) pair, in chunks of
   ``batch_size`` rows, and only the candidate tokens (right-padded) are run on top.

The log-likelihood is the sum of the candidate tokens' log-probabilities; with
``length_normalize`` the ranking uses the mean per token instead. The confidence is a
softmax of the ranking scores over the candidates.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import softmax

from c2s_engine.inference.batching import (
    DEFAULT_BATCH_SIZE,
    ensure_pad_token,
    pad_batch,
    run_batches,
    unpack_model,
)
from c2s_engine.inference.progress import CancelLike, ProgressFn

TAIL_TOKENS = 16


def label_response(label: str) -> str:
    """The default candidate text: C2S answers are the label after a space, then a period."""
    return f" {label}."


@dataclass
class ScoreResult:
    """Outputs of :func:`score_labels`; rows follow the prompts, columns the candidates.

    Attributes
    ----------
    candidates
        The candidate labels, in the column order.
    best, best_index
        Highest-scoring label per prompt and its column.
    loglik
        ``(n_prompts, n_candidates)`` summed log-probabilities of the candidate tokens.
    n_tokens
        ``(n_prompts, n_candidates)`` number of scored tokens.
    scores
        What the ranking used: ``loglik`` or, with ``length_normalize``, ``loglik / n_tokens``.
    confidence
        Softmax of ``scores`` over the candidates (each row sums to 1).
    batch_size, seconds, cells_per_s
        Final prompt batch size, wall time and prompts per second.
    """

    candidates: list[str]
    best: list[str]
    best_index: np.ndarray
    loglik: np.ndarray
    n_tokens: np.ndarray
    scores: np.ndarray
    confidence: np.ndarray
    batch_size: int
    seconds: float
    cells_per_s: float


@dataclass
class _Continuations:
    """Candidate token segments shared by every prompt with the same tail.

    ``prefix_cut`` tokens are dropped from the end of the prompt before the prefix pass
    (non-zero only when a candidate merges with the prompt's last tokens). Segment ``c``
    is the tokens after the shortened prefix; its tokens from ``first_scored[c]`` on
    belong to the candidate.
    """

    prefix_cut: int
    segments: list[list[int]]
    first_scored: list[int]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _continuations(tokenizer, tail: str, texts: Sequence[str], special: bool) -> _Continuations:
    tail_ids = tokenizer(tail, add_special_tokens=special)["input_ids"]
    full = tokenizer([tail + t for t in texts], add_special_tokens=special)["input_ids"]
    shared = [_common_prefix(tail_ids, f) for f in full]
    start = min(shared)
    if start == 0:
        raise ValueError("a candidate merges with the very first prompt token; "
                         "the prompt is too short to score candidates after it")
    if any(len(f) == s for f, s in zip(full, shared, strict=True)):
        raise ValueError("a candidate text adds no token after the prompt (empty candidate?)")
    return _Continuations(prefix_cut=len(tail_ids) - start,
                          segments=[f[start:] for f in full],
                          first_scored=[s - start for s in shared])


def _plan(tokenizer, prompts: Sequence[str], texts: Sequence[str]):
    """Per prompt: its token ids, and the :class:`_Continuations` of its tail."""
    if not prompts:
        return [], []
    enc = tokenizer(list(prompts), return_offsets_mapping=True)
    groups: dict[tuple[str, bool], _Continuations] = {}
    prompt_ids, keys = [], []
    for prompt, ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"],
                                    strict=True):
        head = max(0, len(ids) - TAIL_TOKENS)
        # The tail starts where the head's last token ends, so a leading space stays in it.
        key = (prompt[offsets[head - 1][1]:], False) if head else (prompt, True)
        if head and ids[:head] + tokenizer(key[0], add_special_tokens=False)["input_ids"] != ids:
            key = (prompt, True)  # the tail tokenizes differently on its own
        if key not in groups:
            groups[key] = _continuations(tokenizer, key[0], texts, special=key[1])
        prompt_ids.append(ids)
        keys.append(key)
    return prompt_ids, [groups[k] for k in keys]


def score_labels(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[str],
    *,
    format_candidate: Callable[[str], str] = label_response,
    length_normalize: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
) -> ScoreResult:
    """Score every candidate label as the continuation of every prompt.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer, or a ``LoadedModel`` and None.
    prompts
        Prompt strings ending with the answer cue (e.g. ``... these genes is:``).
    candidates
        Candidate labels (distinct).
    format_candidate
        Turns a label into the text scored after the prompt; defaults to the C2S response
        shape ``" {label}."``. Pass ``lambda c: template.format_response(cell_type=c)``
        to follow a template.
    length_normalize
        Rank by mean log-probability per token instead of the sum. The sum is the model's
        probability of the whole answer (the trailing period marks its end), so it is the
        default; the mean removes the bias against labels of many tokens.
    batch_size
        Prompts per prefix pass, and (prompt, candidate) rows per candidate pass.
    progress, cancel
        See :mod:`c2s_engine.inference.progress`.

    Raises
    ------
    CancelledError
        ``partial`` maps input index -> log-likelihood row of the finished prompts.
    InsufficientMemoryError
        When one prompt alone does not fit in device memory.
    """
    model, tokenizer = unpack_model(model, tokenizer)
    ensure_pad_token(tokenizer)
    candidates = list(candidates)
    if not candidates:
        raise ValueError("at least one candidate label is needed")
    if len(set(candidates)) != len(candidates):
        raise ValueError("candidate labels must be distinct")
    prompt_ids, plans = _plan(tokenizer, prompts, [format_candidate(c) for c in candidates])
    n_tokens = np.array([[len(s) - f for s, f in zip(p.segments, p.first_scored, strict=True)]
                         for p in plans], dtype=np.int64).reshape(len(prompts), len(candidates))

    def work(indices: list[int]) -> list[np.ndarray]:
        # Candidate rows per pass follow the prompt batch, so an OOM back-off shrinks both.
        return _score_batch(model, tokenizer, [prompt_ids[i] for i in indices],
                            [plans[i] for i in indices], rows_per_pass=len(indices))

    run = run_batches([len(x) for x in prompt_ids], work, batch_size=batch_size,
                      progress=progress, cancel=cancel, unit="prompts")
    loglik = np.vstack(run.results) if run.results else np.zeros((0, len(candidates)))
    scores = loglik / n_tokens if length_normalize else loglik
    best_index = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    return ScoreResult(
        candidates=candidates, best=[candidates[j] for j in best_index], best_index=best_index,
        loglik=loglik, n_tokens=n_tokens, scores=scores, confidence=softmax(scores, axis=1),
        batch_size=run.batch_size, seconds=run.seconds, cells_per_s=run.items_per_s,
    )


def _score_batch(model, tokenizer, prompt_ids: list[list[int]], plans: list[_Continuations],
                 rows_per_pass: int) -> list[np.ndarray]:
    """Log-likelihood rows for one batch of prompts (see the module docstring)."""
    device = model.device
    prefixes = [ids[:len(ids) - p.prefix_cut] for ids, p in zip(prompt_ids, plans, strict=True)]
    batch = pad_batch(tokenizer, prefixes, "left", device)
    mask = batch["attention_mask"]
    with torch.inference_mode():
        out = model(**batch, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                    logits_to_keep=1)
        first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        n_cand = len(plans[0].segments)
        loglik = np.zeros((len(plans), n_cand))
        pairs = [(i, c) for i in range(len(plans)) for c in range(n_cand)]
        for start in range(0, len(pairs), rows_per_pass):
            chunk = pairs[start:start + rows_per_pass]
            rows = torch.tensor([i for i, _ in chunk], device=device)
            segs = [plans[i].segments[c] for i, c in chunk]
            seg = pad_batch(tokenizer, segs, "right", device)
            cache = copy.deepcopy(out.past_key_values)
            cache.reorder_cache(rows)
            positions = mask.sum(-1)[rows, None] + torch.arange(seg["input_ids"].shape[1],
                                                               device=device)
            logits = model(input_ids=seg["input_ids"], past_key_values=cache,
                           attention_mask=torch.cat([mask[rows], seg["attention_mask"]], dim=1),
                           position_ids=positions, use_cache=True).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, (i, c) in enumerate(chunk):
                tokens = torch.tensor(segs[r], device=device)
                # Segment token 0 is predicted by the prefix's last position, token j > 0
                # by segment position j - 1.
                token_logp = torch.cat([
                    first_logp[i, tokens[:1]],
                    logp[r, torch.arange(len(tokens) - 1, device=device), tokens[1:]],
                ])
                loglik[i, c] = token_logp[plans[i].first_scored[c]:].sum().item()
    return list(loglik)
