"""annotate(): scored and free-text cell types, cluster summary, metrics, cache, card check."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from c2s_engine.errors import LabelsError, ObsColumnError, TaskOptionError
from c2s_engine.inference import generate, score_labels
from c2s_engine.models import load_model
from c2s_engine.prompts import get_template
from c2s_engine.sentences import get_sentences
from c2s_engine.tasks.annotate import annotate, obs_keys
from c2s_engine.tasks.label_metrics import (
    classification_metrics,
    cluster_summary,
    normalize_label,
    paired_accuracy_test,
)
from c2s_engine.tasks.runtime import TaskNotSupportedError, TaskNotSupportedWarning
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

N_CELLS = 16
TOP_K = 16  # the tiny Gemma-2 card's top_k


@pytest.fixture(scope="module")
def annotator(tiny_gemma2_dir):
    """Tiny Gemma-2 whose card lists cell_type_prediction (top_k 16)."""
    return load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def embed_only(build_checkpoint, tmp_path_factory):
    """Tiny GPT-NeoX whose card lists only 'embedding'."""
    path = build_checkpoint(tmp_path_factory.mktemp("embed_only") / "m", "gpt_neox",
                            card={"tasks": ["embedding"], "top_k": TOP_K})
    return load_model(str(path), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def prepared(pbmc68k):
    adata = pbmc68k[:N_CELLS].copy()
    prepare(adata)
    return adata


@pytest.fixture
def data(prepared):
    return prepared.copy()


def prompts_by_hand(adata, seed: int = 0) -> list[str]:
    from c2s_engine.sentences import compute_sentences, get_sentences

    fresh = adata.copy()
    compute_sentences(fresh, top_k=TOP_K, seed=seed)
    template = get_template("cell_type_prediction")
    return [template.format_prompt(num_genes=len(s.split()), organism="Homo sapiens",
                                   cell_sentence=s) for s in get_sentences(fresh)]


def test_scoring_path_writes_label_confidence_and_probabilities(data, annotator):
    candidates = list(data.obs["bulk_labels"].cat.categories)
    present = [c for c in candidates if (data.obs["bulk_labels"] == c).any()]
    result = annotate(data, annotator, labels_from="bulk_labels", batch_size=4)

    assert result.mode == "score" and result.generated is None
    assert result.candidates == present
    # Same numbers as scoring the hand-built canonical prompts directly.
    expected = score_labels(annotator, None, prompts_by_hand(data), present)
    np.testing.assert_allclose(result.probabilities, expected.confidence, atol=1e-5)
    probs = data.obsm["c2s_label_probs"]
    assert probs.shape == (N_CELLS, len(present)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert list(data.obs["c2s_cell_type"]) == expected.best
    assert isinstance(data.obs["c2s_cell_type"].dtype, pd.CategoricalDtype)
    np.testing.assert_allclose(data.obs["c2s_confidence"], probs.max(axis=1), atol=1e-6)
    assert "c2s_cell_type_generated" not in data.obs

    prov = data.uns["c2s"]["annotate"]
    assert prov["task"] == "cell_type_prediction"
    assert prov["template"] == "cell_type_prediction:0"
    assert prov["top_k"] == TOP_K and prov["seed"] == -1 and prov["card_lists_task"] is True
    assert prov["model"] == annotator.name and prov["precision"] == "fp32"
    assert prov["params"]["labels_source"] == "obs:bulk_labels"
    assert prov["candidates"] == present
    assert set(prov["calls"]) == {"score"} and prov["calls"]["score"]["n_items"] == N_CELLS
    assert prov["keys"] == {"prediction": "c2s_cell_type", "confidence": "c2s_confidence",
                            "probabilities": "c2s_label_probs"}


def test_tie_orders_average_the_probabilities_of_sentences_ranked_with_other_seeds(
        data, annotator):
    present = [c for c in data.obs["bulk_labels"].cat.categories
               if (data.obs["bulk_labels"] == c).any()]
    stored = prompts_by_hand(data)
    result = annotate(data, annotator, labels_from="bulk_labels", tie_orders=3, batch_size=8)
    by_seed = [prompts_by_hand(data, seed) for seed in range(3)]
    assert by_seed[0] == stored and by_seed[1] != stored  # ties do reorder these cells
    expected = np.mean([score_labels(annotator, None, p, present).confidence for p in by_seed],
                       axis=0)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert list(data.obs["c2s_cell_type"]) == [present[i] for i in expected.argmax(axis=1)]
    prov = data.uns["c2s"]["annotate"]
    assert prov["params"]["tie_orders"] == 3
    assert set(prov["calls"]) == {"score", "score_tie_order_1", "score_tie_order_2"}
    # The stored ranking (what other tasks read) is still the seed-0 one.
    assert data.uns["c2s"]["sentences"]["seed"] == 0
    template = get_template("cell_type_prediction")
    assert [template.format_prompt(num_genes=len(s.split()), organism="Homo sapiens",
                                   cell_sentence=s)
            for s in get_sentences(data, n_genes=TOP_K)] == stored
    with pytest.raises(TaskOptionError, match="needs scored candidate labels"):
        annotate(data, annotator, mode="generate", tie_orders=2)
    with pytest.raises(TaskOptionError, match="tie_orders must be at least 1"):
        annotate(data, annotator, labels_from="bulk_labels", tie_orders=0)


def test_free_text_path_is_the_greedy_answer_cut_at_the_period(data, annotator):
    result = annotate(data, annotator, mode="generate", max_new_tokens=4, batch_size=8)
    template = get_template("cell_type_prediction")
    direct = generate(annotator, None, prompts_by_hand(data), max_new_tokens=4,
                      stop=template.stop.stop_strings)
    expected = [template.stop.cut(a) for a in direct.answers]
    assert list(result.generated) == expected
    assert list(data.obs["c2s_cell_type_generated"]) == expected
    assert list(data.obs["c2s_cell_type"]) == expected  # the prediction is the free text
    assert "c2s_confidence" not in data.obs and "c2s_label_probs" not in data.obsm
    assert result.probabilities is None and result.candidates == []
    assert data.uns["c2s"]["annotate"]["params"]["max_new_tokens"] == 4


def test_both_mode_keeps_free_text_next_to_scored_label_and_second_call_hits_cache(
        data, annotator):
    labels = ["T cell", "B cell", "monocyte"]
    first = annotate(data, annotator, labels=labels, mode="both", max_new_tokens=3)
    assert set(first.provenance["calls"]) == {"generate", "score"}
    assert first.provenance["calls"]["score"]["n_cached"] == 0
    assert set(data.obs["c2s_cell_type"]) <= set(labels)
    assert "c2s_cell_type_generated" in data.obs and "c2s_confidence" in data.obs
    assert data.uns["c2s"]["annotate"]["params"]["labels_source"] == "list"

    second = annotate(data, annotator, labels=labels, mode="both", max_new_tokens=3)
    for call in ("generate", "score"):
        assert second.provenance["calls"][call]["n_cached"] == N_CELLS
    np.testing.assert_array_equal(second.probabilities, first.probabilities)
    assert list(second.generated) == list(first.generated)


def test_a_later_run_removes_keys_it_does_not_write(data, annotator):
    annotate(data, annotator, labels=["T cell", "B cell"])
    assert "c2s_confidence" in data.obs
    annotate(data, annotator, mode="generate", max_new_tokens=2)
    assert "c2s_confidence" not in data.obs and "c2s_label_probs" not in data.obsm


def test_custom_key_names_follow_the_documented_scheme():
    assert obs_keys("c2s_cell_type") == {
        "prediction": "c2s_cell_type", "generated": "c2s_cell_type_generated",
        "confidence": "c2s_confidence", "cluster": "c2s_cluster_cell_type",
        "probabilities": "c2s_label_probs"}
    assert obs_keys("run2")["confidence"] == "run2_confidence"


def test_metrics_and_cluster_summary_match_sklearn_and_pandas(data, annotator):
    result = annotate(data, annotator, labels_from="bulk_labels", groupby="louvain")
    truth = data.obs["bulk_labels"].astype(str).map(normalize_label)
    predicted = data.obs["c2s_cell_type"].astype(str).map(normalize_label)
    metrics = data.uns["c2s"]["annotate"]["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    true_classes = [normalize_label(x) for x in metrics["labels"][:metrics["n_true_labels"]]]
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, labels=true_classes, average="macro", zero_division=0))
    order = [normalize_label(x) for x in metrics["labels"]]
    np.testing.assert_array_equal(metrics["confusion"],
                                  confusion_matrix(truth, predicted, labels=order))
    assert metrics["n_cells"] == N_CELLS and metrics["n_unlabelled"] == 0

    clusters = data.uns["c2s"]["annotate"]["clusters"]
    assert clusters["groupby"] == "louvain"
    for cluster, majority, agreement, n in zip(clusters["cluster"], clusters["cell_type"],
                                               clusters["agreement"], clusters["n_cells"],
                                               strict=True):
        members = data.obs.loc[data.obs["louvain"].astype(str) == cluster, "c2s_cell_type"]
        counts = members.astype(str).value_counts()
        assert n == len(members)
        assert agreement == pytest.approx(counts.max() / len(members))
        assert majority == sorted(counts[counts == counts.max()].index)[0]
        assert (data.obs.loc[members.index, "c2s_cluster_cell_type"] == majority).all()
    assert list(result.clusters.index) == list(clusters["cluster"])


def test_results_survive_h5ad_round_trip(data, annotator, tmp_path):
    annotate(data, annotator, labels=["T cell", "B cell"], mode="both", max_new_tokens=2,
             groupby="louvain", truth="bulk_labels")
    path = tmp_path / "annotated.h5ad"
    data.write_h5ad(path)
    back = anndata.read_h5ad(path)
    for key in ("c2s_cell_type", "c2s_cell_type_generated", "c2s_confidence",
                "c2s_cluster_cell_type"):
        np.testing.assert_array_equal(back.obs[key].to_numpy(), data.obs[key].to_numpy())
    np.testing.assert_array_equal(back.obsm["c2s_label_probs"], data.obsm["c2s_label_probs"])
    stored, before = back.uns["c2s"]["annotate"], data.uns["c2s"]["annotate"]
    assert stored["params"] == before["params"]
    assert stored["calls"] == before["calls"]
    assert list(stored["candidates"]) == before["candidates"]
    np.testing.assert_array_equal(stored["metrics"]["confusion"], before["metrics"]["confusion"])
    assert list(stored["metrics"]["labels"]) == before["metrics"]["labels"]
    np.testing.assert_allclose(stored["clusters"]["agreement"], before["clusters"]["agreement"])


def test_card_without_the_task_is_refused_or_marked(data, embed_only):
    with pytest.raises(TaskNotSupportedError, match="cell_type_prediction"):
        annotate(data, embed_only, labels=["T cell", "B cell"])
    with pytest.warns(TaskNotSupportedWarning, match="not trained for cell_type_prediction"):
        result = annotate(data, embed_only, labels=["T cell", "B cell"], allow_unsupported=True)
    assert result.provenance["card_lists_task"] is False
    assert data.uns["c2s"]["annotate"]["card_lists_task"] is False


def test_option_errors_name_the_problem(data, annotator):
    with pytest.raises(TaskOptionError, match="both labels and labels_from"):
        annotate(data, annotator, labels=["T"], labels_from="bulk_labels")
    with pytest.raises(ObsColumnError, match="'cell_type' is not in adata.obs.*bulk_labels"):
        annotate(data, annotator, labels_from="cell_type")
    with pytest.raises(ObsColumnError, match="groupby column 'leiden'"):
        annotate(data, annotator, labels=["T"], groupby="leiden")
    with pytest.raises(LabelsError, match="mode='score' scores candidate labels but none"):
        annotate(data, annotator, mode="score")
    with pytest.raises(TaskOptionError, match="a list of labels, got the string 'T cell'"):
        annotate(data, annotator, labels="T cell")
    with pytest.raises(TaskOptionError, match="unknown annotation mode 'best'"):
        annotate(data, annotator, labels=["T"], mode="best")
    with pytest.raises(LabelsError, match="no candidate labels"):
        annotate(data, annotator, labels=["  ", ""])
    assert "c2s_cell_type" not in data.obs  # nothing written when the call is refused


# --- label_metrics on hand-made labels -------------------------------------------------


def test_normalize_label():
    assert normalize_label("  CD14+  Monocyte. ") == "cd14+ monocyte"
    assert normalize_label("T cell..") == "t cell"
    assert normalize_label("NK") == normalize_label("nk.")


def test_classification_metrics_by_hand():
    truth = ["T cell", "B cell", "B cell", None, "NK"]
    predicted = ["t cell.", "B cell", "NK", "B cell", "Monocyte"]
    m = classification_metrics(truth, predicted)
    assert m.labels == ["B cell", "NK", "T cell", "Monocyte"] and m.n_true_labels == 3
    assert m.n_cells == 4 and m.n_unlabelled == 1
    assert m.accuracy == pytest.approx(2 / 4)
    # F1: B cell 2/3 (precision 1, recall 1/2), NK 0, T cell 1; Monocyte is not a true class.
    assert m.macro_f1 == pytest.approx((2 / 3 + 0 + 1) / 3)
    np.testing.assert_array_equal(m.confusion, [[1, 1, 0, 0],
                                                [0, 0, 0, 1],
                                                [0, 0, 1, 0],
                                                [0, 0, 0, 0]])
    with pytest.raises(LabelsError, match="no cell has a true label"):
        classification_metrics([None, np.nan], ["T", "B"])
    with pytest.raises(LabelsError, match="2 true labels but 1 predictions"):
        classification_metrics(["T", "B"], ["T"])


def test_paired_accuracy_test_by_hand():
    truth = ["T", "T", "B", "B", "NK", "NK", "T", None]
    first = ["t.", "T", "B", "NK", "NK", "T", "B", "T"]
    second = ["B", "T", "B", "B", "B", "B", "B", "B"]
    found = paired_accuracy_test(truth, first, second)
    # Right: first T,T,B,-,NK,-,- ; second -,T,B,B,-,-,- ; the unlabelled cell is skipped.
    assert found == {"n_cells": 7, "first_only": 2, "second_only": 1, "both_right": 2,
                     "both_wrong": 2, "p_value": pytest.approx(1.0)}
    # 10 discordant cells all won by one side: two-sided p = 2 * 0.5**10.
    many = paired_accuracy_test(["A"] * 12, ["A"] * 12, ["B"] * 10 + ["A"] * 2)
    assert many["first_only"] == 10 and many["p_value"] == pytest.approx(2 * 0.5 ** 10)
    # 7 vs 1: two-sided p = 2 * P(X <= 1), X ~ Binomial(8, 0.5) = 2 * 9 / 256.
    mixed = paired_accuracy_test(["A"] * 8, ["A"] * 7 + ["B"], ["B"] * 7 + ["A"])
    assert mixed["p_value"] == pytest.approx(2 * 9 / 256)
    assert paired_accuracy_test(["A"], ["A"], ["A"])["p_value"] == 1.0
    with pytest.raises(LabelsError, match="2 true labels but 2 and 1 predictions"):
        paired_accuracy_test(["A", "B"], ["A", "B"], ["A"])


def test_cluster_summary_by_hand():
    groups = pd.Series(pd.Categorical(["b", "a", "a", "a", "b", None, "a"],
                                      categories=["b", "a", "c"]))
    predicted = ["NK", "T", "T", "B", "B", "T", "T"]
    confidence = [0.2, 0.9, 0.7, 0.5, 0.4, 1.0, 0.3]
    summary = cluster_summary(groups, predicted, confidence)
    assert list(summary.index) == ["b", "a"]  # category order; 'c' has no cell
    assert list(summary["cell_type"]) == ["B", "T"]  # b is a B/NK tie: the first sorted wins
    np.testing.assert_allclose(summary["agreement"], [0.5, 3 / 4])
    assert list(summary["n_cells"]) == [2, 4]
    np.testing.assert_allclose(summary["mean_confidence"], [0.3, (0.9 + 0.7 + 0.5 + 0.3) / 4])


def test_cluster_summary_sorts_plain_values():
    summary = cluster_summary(pd.Series([2, 10, 2]), ["x", "y", "x"])
    assert list(summary.index) == ["10", "2"] and "mean_confidence" not in summary
