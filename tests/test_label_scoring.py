"""Label scoring equals a hand computation with a plain forward pass over prompt+label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from c2s_engine.inference import label_response, score_labels
from c2s_engine.inference.scoring import TAIL_TOKENS
from c2s_engine.prompts import get_template

pytest_plugins = ["tiny_checkpoints"]

LONG = ("MALAT1 B2M TMSB4X EEF1A1 RPL13 RPS27 CD74 HLA-DRA LYZ S100A9 S100A8 CD3E CD3D "
        "IL7R CCR7 MS4A1 CD79A NKG7\nThe cell type corresponding to these genes is :")
PROMPTS = ["CD3E CD3D IL7R Cell sentence :", LONG, "LYZ S100A9 CD14 :"]
CANDIDATES = ["NK", "B", "T cell", "monocyte", "platelet"]


def load(path, arch):
    extra = {"attn_implementation": "eager"} if arch == "gemma2" else {}
    return (AutoModelForCausalLM.from_pretrained(path, **extra).eval(),
            AutoTokenizer.from_pretrained(path))


@pytest.fixture(scope="module", params=["gpt_neox", "gemma2"])
def tiny(request, tiny_gpt_neox_dir, tiny_gemma2_dir):
    path = tiny_gpt_neox_dir if request.param == "gpt_neox" else tiny_gemma2_dir
    return load(path, request.param)


def hand_loglik(model, tok, prompt: str, continuation: str) -> tuple[float, int]:
    """Sum of log P(token) over the tokens of prompt+continuation not shared with prompt."""
    prompt_ids = tok(prompt)["input_ids"]
    full = tok(prompt + continuation)["input_ids"]
    shared = 0
    while shared < len(prompt_ids) and prompt_ids[shared] == full[shared]:
        shared += 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), dim=-1)
    return sum(logp[j - 1, full[j]].item() for j in range(shared, len(full))), len(full) - shared


def test_scores_equal_a_plain_forward_pass(tiny):
    model, tok = tiny
    assert len(tok(LONG)["input_ids"]) > TAIL_TOKENS  # exercises the re-tokenized tail
    result = score_labels(model, tok, PROMPTS, CANDIDATES, batch_size=2)
    expected = np.array([[hand_loglik(model, tok, p, label_response(c))[0] for c in CANDIDATES]
                         for p in PROMPTS])
    np.testing.assert_allclose(result.loglik, expected, atol=1e-4)
    # " T cell." is three tokens, the others two (label, period).
    np.testing.assert_array_equal(result.n_tokens, [[2, 2, 3, 2, 2]] * 3)
    np.testing.assert_array_equal(result.best_index, expected.argmax(axis=1))
    assert result.best == [CANDIDATES[j] for j in expected.argmax(axis=1)]
    np.testing.assert_allclose(result.confidence.sum(axis=1), 1.0)
    shifted = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(result.confidence, shifted / shifted.sum(axis=1, keepdims=True),
                               atol=1e-4)


def test_a_candidate_merging_with_the_prompt_end_is_scored_on_the_merged_tokens(tiny):
    model, tok = tiny
    # No space before the label: "NK" + "cell" is one unknown word, so the prompt's last
    # token changes and must be scored as part of the candidate.
    prompts = ["CD3E CD3D NK", LONG + " NK"]
    candidates = ["cell", " cell", "cell ."]
    result = score_labels(model, tok, prompts, candidates, format_candidate=lambda c: c)
    for i, prompt in enumerate(prompts):
        for j, cand in enumerate(candidates):
            loglik, n = hand_loglik(model, tok, prompt, cand)
            assert result.loglik[i, j] == pytest.approx(loglik, abs=1e-4)
            assert result.n_tokens[i, j] == n
    np.testing.assert_array_equal(result.n_tokens[0], [1, 1, 2])


def test_length_normalisation_ranks_by_mean_log_probability(tiny):
    model, tok = tiny
    plain = score_labels(model, tok, PROMPTS, CANDIDATES)
    mean = score_labels(model, tok, PROMPTS, CANDIDATES, length_normalize=True)
    np.testing.assert_allclose(mean.loglik, plain.loglik)
    np.testing.assert_allclose(mean.scores, plain.loglik / plain.n_tokens)
    np.testing.assert_array_equal(mean.best_index, mean.scores.argmax(axis=1))
    np.testing.assert_allclose(mean.confidence.sum(axis=1), 1.0)


def test_template_responses_are_the_default_candidate_format():
    template = get_template("cell_type_prediction")
    assert template.format_response(cell_type="NK cell") == label_response("NK cell")


def test_batch_size_does_not_change_scores(tiny):
    model, tok = tiny
    one = score_labels(model, tok, PROMPTS, CANDIDATES, batch_size=1)
    three = score_labels(model, tok, PROMPTS, CANDIDATES, batch_size=3)
    np.testing.assert_allclose(one.loglik, three.loglik, atol=1e-4)


@pytest.mark.parametrize(("candidates", "message"), [
    ([], "at least one candidate"),
    (["NK", "NK"], "distinct"),
])
def test_bad_candidate_lists_are_refused(tiny, candidates, message):
    model, tok = tiny
    with pytest.raises(ValueError, match=message):
        score_labels(model, tok, PROMPTS, candidates)


def test_no_prompts_give_empty_matrices(tiny):
    model, tok = tiny
    result = score_labels(model, tok, [], CANDIDATES)
    assert result.loglik.shape == result.confidence.shape == (0, len(CANDIDATES))
    assert result.best == []
