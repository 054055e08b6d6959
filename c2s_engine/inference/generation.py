"""Batched text generation with per-sequence stop strings.

Prompts are tokenized once, sorted by token length and run in left-padded batches
through ``model.generate`` with the KV cache on. Each sequence stops at the first stop
string in its *new* tokens (or at EOS); a finished sequence is padded by ``generate``
and the batch ends as soon as every sequence has finished. The answer is read from the
generated token ids only: the prompt is sliced off by token count and only the new
tokens are decoded, so a tokenizer whose decode does not reproduce the prompt text
(normalisation, unknown words, collapsed spaces) cannot corrupt the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    set_seed,
)

from c2s_engine.inference.batching import (
    DEFAULT_BATCH_SIZE,
    ensure_pad_token,
    pad_batch,
    run_batches,
    tokenize,
    unpack_model,
)
from c2s_engine.inference.progress import CancelLike, ProgressFn

DEFAULT_STOP = (".", "\n")


class Generated(NamedTuple):
    """One prompt's output (the item kept in ``CancelledError.partial``)."""

    answer: str
    completion: str
    n_new_tokens: int


@dataclass
class GenerationResult:
    """Outputs of :func:`generate`, every list in input order.

    Attributes
    ----------
    answers
        The completion cut before the first stop string, whitespace stripped.
    completions
        All decoded new tokens (special tokens skipped), stop string included.
    n_new_tokens
        Tokens generated per prompt, the stop token or EOS included, padding excluded.
    batch_size
        Batch size used at the end (smaller than asked after an out-of-memory back-off).
    seconds, cells_per_s, tokens_per_s
        Wall time of the call, prompts per second and generated tokens per second.
    """

    answers: list[str]
    completions: list[str]
    n_new_tokens: list[int]
    batch_size: int
    seconds: float
    cells_per_s: float
    tokens_per_s: float


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` before the earliest occurrence of any stop string, whitespace stripped."""
    positions = [text.find(s) for s in stop or ()]
    cut = min((p for p in positions if p >= 0), default=len(text))
    return text[:cut].strip()


class FinishTracker(StoppingCriteria):
    """Ends each sequence at the first stop string in its new text or at EOS.

    It records how many tokens every sequence had generated when it finished, because
    after that ``generate`` pads it (with EOS when pad is EOS), so the count cannot be
    read back from the output. Only the last few new tokens are decoded at each step: a
    stop string completed by the latest token lies within them, and earlier ones were
    caught at earlier steps. Prompt tokens are never looked at, so a stop string in the
    prompt cannot end a sequence.
    """

    def __init__(self, tokenizer, stop: Sequence[str], eos: Sequence[int], prompt_len: int,
                 n_rows: int) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.eos = torch.tensor(list(eos), dtype=torch.long)
        self.prompt_len = prompt_len
        # One token holds at least one byte of a stop string; +2 absorbs decoders that
        # alter the first decoded token (e.g. strip its leading space).
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 2
        self.finished_at = [0] * n_rows  # 0 = still running

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len:]
        done = torch.isin(new[:, -1], self.eos.to(new.device)).tolist()
        if self.stop:
            texts = self.tokenizer.batch_decode(new[:, -self.window:], skip_special_tokens=True)
            done = [d or any(s in t for s in self.stop) for d, t in zip(done, texts, strict=True)]
        for row, is_done in enumerate(done):
            if is_done and not self.finished_at[row]:
                self.finished_at[row] = new.shape[1]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class NoRepeatNGramInAnswer(LogitsProcessor):
    """Forbid a token that would repeat an n-gram of the *generated* tokens.

    ``generate(no_repeat_ngram_size=n)`` also counts the prompt's n-grams, which would stop
    an answer from quoting a cell type label or gene list written in its context; this
    guard looks only at the tokens after ``prompt_len``.
    """

    def __init__(self, n: int, prompt_len: int) -> None:
        self.n = n
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.prompt_len:].tolist()
        for row, tokens in enumerate(new):
            if len(tokens) < self.n:
                continue
            prefix = tokens[len(tokens) - self.n + 1:]
            banned = {tokens[i + self.n - 1] for i in range(len(tokens) - self.n + 1)
                      if tokens[i:i + self.n - 1] == prefix}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


class NoRepeatedWordInAnswer(LogitsProcessor):
    """Forbid a whole-word token that the *generated* tokens already hold.

    A cell sentence names each gene once, but a sampled answer can name one twice
    ("... TIMP1 TIMP1 ..."), and every repeat takes the place of a gene the cell expresses.
    Only tokens in ``word_ids`` (see :func:`whole_word_ids`) are guarded, and the prompt's
    tokens do not count: the answer may name the genes of its input cell.
    """

    def __init__(self, word_ids: Sequence[int], prompt_len: int) -> None:
        self.word_ids = list(word_ids)
        self.prompt_len = prompt_len
        self._guarded: torch.Tensor | None = None  # vocabulary mask, made at the first step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.prompt_len:]
        if new.shape[1] == 0:
            return scores
        if self._guarded is None:
            self._guarded = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            self._guarded[[i for i in self.word_ids if i < scores.shape[-1]]] = True
        seen = torch.zeros_like(scores, dtype=torch.bool)
        seen.scatter_(1, new, True)
        return scores.masked_fill(seen & self._guarded, -float("inf"))


class ContrastivePromptGuidance(LogitsProcessor):
    """Sharpen what an answer owes to its own prompt against a contrasting prompt.

    ``scores = c + w * (c - n)``: ``c`` are the log-probabilities given the row's prompt,
    ``n`` those given its contrasting prompt (the same text with another input, e.g. a
    control cell of another cell type), both continued with the tokens generated so far.
    Tokens both prompts predict alike (a response shared by all inputs) keep their
    log-probability; tokens the own prompt makes likelier (what is particular to its input)
    gain, the others lose. ``w = 0`` changes nothing. It is classifier-free guidance with
    another input in place of no input, which a model trained on filled prompts never saw.
    The contrasting prompts run through the model beside the batch, with their own KV cache,
    so decoding costs about twice as much.
    """

    def __init__(self, model, contrast: dict[str, torch.Tensor], prompt_len: int,
                 weight: float) -> None:
        self.model = model
        self.ids = contrast["input_ids"]
        self.mask = contrast["attention_mask"]
        self.prompt_len = prompt_len
        self.weight = float(weight)
        self.past = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.prompt_len:]
        if self.past is None:  # the first step reads the whole contrasting prompt
            step = torch.cat([self.ids, new], dim=1)
            self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=1)
        else:
            step = new[:, -1:]
            self.mask = torch.cat([self.mask, torch.ones_like(step)], dim=1)
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -step.shape[1]:]
        out = self.model(input_ids=step, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        own = torch.log_softmax(scores.float(), dim=-1)
        other = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        guided = own + self.weight * (own - other)
        # A token a guard forbade stays forbidden (-inf - -inf would give nan).
        return guided.masked_fill(torch.isneginf(own), -float("inf")).to(scores.dtype)


def whole_word_ids(tokenizer) -> list[int] | None:
    """Ids of the vocabulary's whole-word tokens, or None when words span several tokens.

    Tokenizers that keep every gene symbol in one token (word-level ones, and WordPiece ones
    such as the demo models', whose word-inner pieces carry a prefix like ``##``) give the
    ids of their non-special tokens that start a word and hold a letter or digit. Byte-pair
    and unigram tokenizers (Pythia's, Gemma's) give None: there a gene is several tokens that
    other genes share, so no single token may be forbidden.
    """
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    kind = type(backend).__name__
    if kind not in ("WordLevel", "WordPiece"):
        return None
    prefix = getattr(backend, "continuing_subword_prefix", None) if kind == "WordPiece" else None
    special = set(tokenizer.all_special_ids)
    return sorted(i for token, i in tokenizer.get_vocab().items()
                  if i not in special and not (prefix and token.startswith(prefix))
                  and any(c.isalnum() for c in token))


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] | None = DEFAULT_STOP,
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
) -> GenerationResult:
    """Generate a completion for every prompt, in length-bucketed batches.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM and its tokenizer, or a ``LoadedModel`` and None.
        The tokenizer gets a pad token (its EOS) if it has none.
    prompts
        Prompt strings (already formatted by a template).
    max_new_tokens
        Most tokens to generate per prompt.
    stop
        Each sequence stops after the first of these strings appears in its new text;
        None or ``()`` stops only at EOS or ``max_new_tokens``. For cell sentences pass
        the template's ``stop.stop_strings`` so gene ids with an inner dot survive.
    do_sample, temperature, top_p, top_k
        Greedy decoding by default; with ``do_sample=True`` the usual sampling controls
        (``top_k=0`` and ``top_p=1.0`` disable those filters).
    no_repeat_ngram_size
        With ``n > 0``, no token n-gram appears twice in an answer (the prompt's n-grams do
        not count; see :class:`NoRepeatNGramInAnswer`). For free text only: a template sets
        it in its ``answer`` block.
    unique_words
        No whole-word token twice in an answer (:class:`NoRepeatedWordInAnswer`): for cell
        sentences, which name each gene once. Applies to tokenizers that keep words whole
        (:func:`whole_word_ids`); with others the repeats are left to the reverse transform.
    contrast_prompts, contrast_weight
        One contrasting prompt per prompt and the guidance weight ``w``
        (:class:`ContrastivePromptGuidance`); off when either is unset or 0.
    seed
        Seeds torch's global generator (``transformers.set_seed``) before the first batch,
        so a sampled call is reproducible for the same prompts, batch size and device.
    batch_size
        Prompts per batch to start with; halved on out-of-memory.
    progress, cancel
        See :mod:`c2s_engine.inference.progress`.

    Returns
    -------
    GenerationResult

    Raises
    ------
    CancelledError
        ``partial`` maps input index -> :class:`Generated` for the finished prompts.
    InsufficientMemoryError
        When one prompt alone does not fit in device memory.
    """
    model, tokenizer = unpack_model(model, tokenizer)
    ensure_pad_token(tokenizer)
    ids = tokenize(tokenizer, prompts)
    eos = _eos_ids(model, tokenizer)
    words = whole_word_ids(tokenizer) if unique_words else None
    if contrast_prompts is not None and len(contrast_prompts) != len(prompts):
        raise ValueError(f"{len(contrast_prompts)} contrasting prompts for {len(prompts)} prompts")
    contrast = (tokenize(tokenizer, contrast_prompts)
                if contrast_prompts is not None and contrast_weight else None)
    options: dict = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "use_cache": True,
                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p, top_k=top_k)
    if seed is not None:
        set_seed(seed)

    def work(indices: list[int]) -> list[Generated]:
        batch = pad_batch(tokenizer, [ids[i] for i in indices], "left", model.device)
        prompt_len = batch["input_ids"].shape[1]
        tracker = FinishTracker(tokenizer, stop or (), eos, prompt_len, len(indices))
        guards: list[LogitsProcessor] = (
            [NoRepeatNGramInAnswer(no_repeat_ngram_size, prompt_len)]
            if no_repeat_ngram_size > 0 else [])
        if contrast is not None:
            other = pad_batch(tokenizer, [contrast[i] for i in indices], "left", model.device)
            guards.insert(0, ContrastivePromptGuidance(model, other, prompt_len, contrast_weight))
        if words:
            guards.append(NoRepeatedWordInAnswer(words, prompt_len))
        with torch.inference_mode():
            out = model.generate(**batch, stopping_criteria=StoppingCriteriaList([tracker]),
                                 logits_processor=LogitsProcessorList(guards), **options)
        rows = []
        for new, finished_at in zip(out[:, prompt_len:].tolist(), tracker.finished_at,
                                    strict=True):
            n = finished_at or len(new)
            completion = tokenizer.decode(new[:n], skip_special_tokens=True)
            rows.append(Generated(cut_at_stop(completion, stop), completion, n))
        return rows

    run = run_batches([len(x) for x in ids], work, batch_size=batch_size, progress=progress,
                      cancel=cancel, unit="prompts")
    n_tokens = [r.n_new_tokens for r in run.results]
    return GenerationResult(
        answers=[r.answer for r in run.results],
        completions=[r.completion for r in run.results],
        n_new_tokens=n_tokens,
        batch_size=run.batch_size,
        seconds=run.seconds,
        cells_per_s=run.items_per_s,
        tokens_per_s=sum(n_tokens) / run.seconds if run.seconds > 0 else 0.0,
    )
