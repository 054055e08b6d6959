"""Fit as many cells, or genes per cell, as a model's context window allows.

Token counts come from tokenising the fully formatted prompt (template words, special
tokens and all) with the model's own tokenizer, so what is packed is exactly what the model
will see. The packers fill these placeholders themselves when the template uses them:
the cell field (``cells`` block or single cell sentence), ``num_cells`` and ``num_genes``;
every other placeholder comes from ``fields``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from c2s_engine.errors import ContextBudgetError, PromptError
from c2s_engine.prompts import (
    CELLS_FIELD,
    NUM_CELLS_FIELD,
    NUM_GENES_FIELD,
    PromptTemplate,
    format_cells,
)

DEFAULT_CONTEXT_LENGTH = 8192  # C2S-Scale (Gemma-2) context window


@dataclass(frozen=True)
class PackedPrompt:
    """A prompt packed into a token budget, with what it took.

    Attributes
    ----------
    text
        The formatted prompt.
    response
        The formatted response when packing a training example (``include_response=True``),
        else ''.
    n_cells_used, n_cells_available
        Cells in the prompt / cells offered.
    n_genes_per_cell
        Genes per cell in the prompt (the longest cell when cells differ in length).
    n_tokens
        Tokens of ``text + response`` including the tokenizer's special tokens.
    budget
        ``context_length - reserve_tokens``; ``n_tokens <= budget`` always holds.
    reserve_tokens
        Tokens kept free for the answer.
    fraction_of_budget
        ``n_tokens / budget``.
    """

    text: str
    response: str
    n_cells_used: int
    n_cells_available: int
    n_genes_per_cell: int
    n_tokens: int
    budget: int
    reserve_tokens: int
    fraction_of_budget: float


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens the model sees for ``text``, special tokens (e.g. BOS) included."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _budget(template: PromptTemplate, context_length: int, reserve_tokens: int | None,
            include_response: bool) -> tuple[int, int]:
    if reserve_tokens is None:
        # A packed training example already holds its answer.
        reserve_tokens = 0 if include_response else template.stop.reserve_tokens
    budget = context_length - reserve_tokens
    if reserve_tokens < 0 or budget <= 0:
        raise ContextBudgetError(
            f"The context of {context_length} tokens leaves no room for a prompt after "
            f"reserving {reserve_tokens} tokens for the answer of task '{template.task}'",
            "use a model with a longer context_length or a smaller reserve_tokens",
        )
    return reserve_tokens, budget


def _check_cell_field(template: PromptTemplate, field: str, include_response: bool) -> None:
    if field in template.prompt_fields:
        return
    if field in template.response_fields:
        if include_response:
            return
        raise PromptError(
            f"The cells of task '{template.task}' are in its response, not its prompt",
            "pass include_response=True to pack a whole training example",
        )
    raise PromptError(
        f"Task '{template.task}' has no placeholder for cells to pack",
        "pack a task whose template holds {cells} or a cell sentence",
    )


def _largest_fitting(lo: int, hi: int, n_tokens: Callable[[int], int], budget: int
                     ) -> tuple[int, int] | None:
    """Largest n in [lo, hi] with n_tokens(n) <= budget (n_tokens grows with n).

    Returns (n, n_tokens(n)), or None when even ``lo`` does not fit.
    """
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        tokens = n_tokens(mid)
        if tokens <= budget:
            best, lo = (mid, tokens), mid + 1
        else:
            hi = mid - 1
    return best


def _render(template: PromptTemplate, fields: Mapping[str, Any], include_response: bool
            ) -> tuple[str, str]:
    prompt = template.format_prompt(**fields)
    response = template.format_response(**fields) if include_response else ""
    return prompt, response


def pack_cells(template: PromptTemplate, sentences: Sequence[str], tokenizer: Any, *,
               context_length: int = DEFAULT_CONTEXT_LENGTH,
               reserve_tokens: int | None = None, fields: Mapping[str, Any] | None = None,
               min_cells: int = 1, include_response: bool = False) -> PackedPrompt:
    """Put as many whole cells, in the given order, as fit into the context.

    Binary search over the number of cells; each candidate prompt is fully formatted and
    tokenised, so the template's own tokens count too.

    Parameters
    ----------
    template
        A multi-cell template (its cells go in the ``{cells}`` block).
    sentences
        Cell sentences (space-separated gene names) in order of preference.
    tokenizer
        Any Hugging Face tokenizer (callable returning ``input_ids``).
    context_length
        The model's context window in tokens.
    reserve_tokens
        Tokens kept free for the answer; default: the template's ``answer.reserve_tokens``
        (0 when ``include_response``).
    fields
        The template's other placeholders (organism, question, ...). ``cells``,
        ``num_cells`` and ``num_genes`` are set by the packer.
    min_cells
        Fewest cells acceptable.
    include_response
        Pack prompt + response (a training example); needed when the cells are in the
        response.

    Raises
    ------
    ContextBudgetError
        When not even ``min_cells`` cells fit.
    """
    _check_cell_field(template, CELLS_FIELD, include_response)
    sentences = list(sentences)
    if min_cells < 1 or len(sentences) < min_cells:
        raise PromptError(
            f"{len(sentences)} cell sentence(s) were given but min_cells is {min_cells}",
            "pass at least min_cells cell sentences and a min_cells of at least 1",
        )
    reserve_tokens, budget = _budget(template, context_length, reserve_tokens, include_response)
    base = dict(fields or {})
    lengths = [len(s.split()) for s in sentences]

    def render(n: int) -> tuple[str, str]:
        filled = {**base, CELLS_FIELD: format_cells(sentences[:n]),
                  NUM_CELLS_FIELD: n, NUM_GENES_FIELD: max(lengths[:n])}
        return _render(template, filled, include_response)

    best = _largest_fitting(min_cells, len(sentences),
                            lambda n: count_tokens(tokenizer, "".join(render(n))), budget)
    if best is None:
        need = count_tokens(tokenizer, "".join(render(min_cells)))
        raise ContextBudgetError(
            f"Not even {min_cells} cell(s) fit the context for task '{template.task}': "
            f"the prompt takes {need} tokens but the budget is {budget} "
            f"({context_length} context - {reserve_tokens} reserved for the answer)",
            "use fewer genes per cell (pack_genes or a smaller top_k) or a model with a "
            "longer context_length",
        )
    n, tokens = best
    text, response = render(n)
    return PackedPrompt(
        text=text, response=response, n_cells_used=n, n_cells_available=len(sentences),
        n_genes_per_cell=max(lengths[:n]), n_tokens=tokens, budget=budget,
        reserve_tokens=reserve_tokens, fraction_of_budget=tokens / budget,
    )


def pack_genes(template: PromptTemplate, sentences: str | Sequence[str], tokenizer: Any, *,
               context_length: int = DEFAULT_CONTEXT_LENGTH,
               reserve_tokens: int | None = None, fields: Mapping[str, Any] | None = None,
               min_genes: int = 1, include_response: bool = False) -> PackedPrompt:
    """Keep every given cell and find the largest uniform number of genes per cell that fits.

    Each cell sentence is cut to its first (most expressed) k genes; binary search over k.

    Parameters
    ----------
    template
        A multi-cell template (all ``sentences`` go in ``{cells}``) or a single-cell one
        (exactly one sentence, in the template's cell field, e.g. ``cell_sentence``).
    sentences
        One cell sentence or a sequence of them.
    min_genes
        Fewest genes per cell acceptable.

    Other parameters are as in :func:`pack_cells`; ``num_genes`` is set to k and
    ``num_cells`` to the number of cells.

    Raises
    ------
    ContextBudgetError
        When not even ``min_genes`` genes per cell fit.
    """
    sentences = [sentences] if isinstance(sentences, str) else list(sentences)
    multi = CELLS_FIELD in template.fields
    field = CELLS_FIELD if multi else template.cell_field
    _check_cell_field(template, field, include_response)
    if not multi and len(sentences) != 1:
        raise PromptError(
            f"Task '{template.task}' holds one cell but {len(sentences)} sentences were given",
            "pass one cell sentence, or use a multi-cell task",
        )
    genes = [s.split() for s in sentences]
    longest = max((len(g) for g in genes), default=0)
    if min_genes < 1 or longest < min_genes:
        raise PromptError(
            f"The longest cell sentence has {longest} gene(s) but min_genes is {min_genes}",
            "pass non-empty cell sentences and a min_genes of at least 1",
        )
    reserve_tokens, budget = _budget(template, context_length, reserve_tokens, include_response)
    base = dict(fields or {})

    def render(k: int) -> tuple[str, str]:
        cut = [" ".join(g[:k]) for g in genes]
        value = format_cells(cut) if multi else cut[0]
        filled = {**base, field: value, NUM_CELLS_FIELD: len(cut), NUM_GENES_FIELD: k}
        return _render(template, filled, include_response)

    best = _largest_fitting(min_genes, longest,
                            lambda k: count_tokens(tokenizer, "".join(render(k))), budget)
    if best is None:
        need = count_tokens(tokenizer, "".join(render(min_genes)))
        raise ContextBudgetError(
            f"Not even {min_genes} gene(s) per cell for {len(genes)} cell(s) fit the context "
            f"for task '{template.task}': the prompt takes {need} tokens but the budget is "
            f"{budget} ({context_length} context - {reserve_tokens} reserved for the answer)",
            "use fewer cells or a model with a longer context_length",
        )
    k, tokens = best
    text, response = render(k)
    return PackedPrompt(
        text=text, response=response, n_cells_used=len(genes), n_cells_available=len(genes),
        n_genes_per_cell=k, n_tokens=tokens, budget=budget, reserve_tokens=reserve_tokens,
        fraction_of_budget=tokens / budget,
    )
