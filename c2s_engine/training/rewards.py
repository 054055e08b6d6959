"""GRPO reward functions: plain callables ``f(prompts, completions, **columns) -> list[float | None]``.

TRL calls every reward with the prompts, the generated completions and each extra column of the
training dataset as a keyword argument holding one value per completion. The dataset builder
(:mod:`c2s_engine.training.dataset`) writes the references these rewards read: ``label``,
``reference_sentence``, ``reference_text`` and ``task``. A reward returns ``None`` for an
example its reference does not apply to (an empty reference), which TRL leaves out of that
reward, so one multi-task dataset can mix cell-type, QA and perturbation examples.

Rewards with settings (a gene program, a text encoder, an embedding) take them as keyword-only
arguments and are bound with :func:`functools.partial`, which TRL names after the function.

Every answer is first cut by its task's stop rule (the answer of a period-stopped task ends at
the first period that ends a word), exactly as the inference tasks cut generated text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from c2s_engine.metrics import PCAEmbedding, TextEncoder, bertscore_f1, kendall_tau
from c2s_engine.prompts import default_registry
from c2s_engine.reverse import fit_reverse, reconstruct
from c2s_engine.tasks.label_metrics import normalize_label

Reward = list[float | None]


def answer_text(completion: str, task: str = "") -> str:
    """The answer in a generated ``completion``, cut by ``task``'s stop rule (stripped)."""
    if not task:
        return completion.strip()
    return default_registry().spec(task).stop.cut(completion)


def _answers(completions: Sequence[str], task: Sequence[str] | None) -> list[str]:
    tasks = task if task is not None else [""] * len(completions)
    return [answer_text(c, t) for c, t in zip(completions, tasks, strict=True)]


def _references(values: Sequence[str] | None, n: int) -> list[str]:
    return [str(v) if v is not None else "" for v in values] if values is not None else [""] * n


def label_match(prompts: Sequence[str], completions: Sequence[str], *,
                label: Sequence[str] | None = None, task: Sequence[str] | None = None,
                **_: Any) -> Reward:
    """1.0 when the answer equals the label after :func:`normalize_label`, else 0.0.

    Case, runs of whitespace and trailing periods do not count ("CD14+  monocyte" matches
    "CD14+ Monocyte"). ``None`` where the example has no label.
    """
    answers = _answers(completions, task)
    return [None if not ref else float(normalize_label(a) == normalize_label(ref))
            for a, ref in zip(answers, _references(label, len(answers)), strict=True)]


def exact_label_match(prompts: Sequence[str], completions: Sequence[str], *,
                      label: Sequence[str] | None = None, task: Sequence[str] | None = None,
                      **_: Any) -> Reward:
    """1.0 when the answer is the label exactly as written (outer whitespace aside), else 0.0.

    ``None`` where the example has no label.
    """
    answers = _answers(completions, task)
    return [None if not ref else float(a == ref.strip())
            for a, ref in zip(answers, _references(label, len(answers)), strict=True)]


def bertscore_reward(prompts: Sequence[str], completions: Sequence[str], *,
                     reference_text: Sequence[str] | None = None,
                     task: Sequence[str] | None = None,
                     encoder: TextEncoder | str | Path | None = None, **_: Any) -> Reward:
    """BERTScore-F1 of the answer against ``reference_text`` (QA answers, captions, summaries).

    ``encoder`` is a :class:`~c2s_engine.metrics.TextEncoder` or the folder of a local encoder
    (e.g. BioBERT); ``None`` is the bundled all-MiniLM-L6-v2. ``None`` where the example has no
    reference text.
    """
    answers = _answers(completions, task)
    refs = _references(reference_text, len(answers))
    scored = [i for i, ref in enumerate(refs) if ref]
    rewards: Reward = [None] * len(answers)
    if scored:
        f1 = bertscore_f1([answers[i] for i in scored], [refs[i] for i in scored],
                          encoder=encoder)
        for i, value in zip(scored, f1, strict=True):
            rewards[i] = float(value)
    return rewards


def kendall_tau_reward(prompts: Sequence[str], completions: Sequence[str], *,
                       reference_sentence: Sequence[str] | None = None,
                       task: Sequence[str] | None = None, program: Sequence[str] = (),
                       **_: Any) -> Reward:
    """Kendall tau between the ranks of a gene program in the generated and the real cell.

    Program genes a sentence does not name share its lowest rank
    (:func:`c2s_engine.metrics.kendall_tau`). When tau is undefined because every program gene
    is tied in one cell (the generated cell names none of them), the reward is 0.0: no
    information about the program's order is worth as much as an uncorrelated order. ``None``
    where the example has no reference sentence.
    """
    if len(program) < 2:
        raise ValueError("kendall_tau_reward needs program=[at least two gene symbols]; bind "
                         "it with functools.partial(kendall_tau_reward, program=[...])")
    answers = _answers(completions, task)
    rewards: Reward = []
    for answer, ref in zip(answers, _references(reference_sentence, len(answers)), strict=True):
        if not ref:
            rewards.append(None)
            continue
        tau = kendall_tau(answer, ref, program)
        rewards.append(tau if np.isfinite(tau) else 0.0)
    return rewards


def embedding_mse_reward(prompts: Sequence[str], completions: Sequence[str], *,
                         reference_sentence: Sequence[str] | None = None,
                         task: Sequence[str] | None = None,
                         embedding: Callable[[list[str]], np.ndarray] | None = None,
                         **_: Any) -> Reward:
    """Negative mean squared difference of the generated and the real cell in an embedding.

    ``embedding`` maps cell sentences to a ``(n, dim)`` array, e.g. a :class:`SentenceEmbedding`
    fitted on the real cells. ``None`` where the example has no reference sentence.
    """
    if embedding is None:
        raise ValueError("embedding_mse_reward needs embedding=; bind it with functools.partial("
                         "embedding_mse_reward, embedding=SentenceEmbedding(real_cells))")
    answers = _answers(completions, task)
    refs = _references(reference_sentence, len(answers))
    scored = [i for i, ref in enumerate(refs) if ref]
    rewards: Reward = [None] * len(answers)
    if scored:
        generated = np.asarray(embedding([answers[i] for i in scored]), dtype=np.float64)
        real = np.asarray(embedding([refs[i] for i in scored]), dtype=np.float64)
        for i, value in zip(scored, ((generated - real) ** 2).mean(axis=1), strict=True):
            rewards[i] = -float(value)
    return rewards


class SentenceEmbedding:
    """Cell sentences -> PCA coordinates of their reconstructed expression.

    Sentences become expression with the dataset's reverse transform
    (:func:`c2s_engine.reverse.reconstruct`), then are projected on a PCA fitted on the real
    cells' C2S-convention expression (:class:`c2s_engine.metrics.PCAEmbedding`), the same
    default embedding as scFID.

    Parameters
    ----------
    reference
        Real cells, prepared and with cell sentences computed
        (:func:`c2s_engine.sentences.compute_sentences`).
    n_components
        PCA dimensions.
    seed
        PCA solver seed.
    """

    def __init__(self, reference: AnnData, *, n_components: int = 50, seed: int = 0) -> None:
        self.fit = fit_reverse(reference)
        self.var_names = reference.var_names.copy()
        self.pca = PCAEmbedding(n_components, seed=seed).fit(reference)

    def __call__(self, sentences: list[str]) -> np.ndarray:
        cells = reconstruct(list(sentences), self.var_names, self.fit)
        return self.pca.transform(cells)


#: Rewards a GRPO config can name.
REWARDS: dict[str, Callable[..., Reward]] = {
    "label_match": label_match,
    "exact_label_match": exact_label_match,
    "bertscore_f1": bertscore_reward,
    "kendall_tau": kendall_tau_reward,
    "embedding_mse": embedding_mse_reward,
}
