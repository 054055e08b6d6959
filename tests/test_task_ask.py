"""answer_question and the dataset facts it is grounded on (tiny random models: assert on
the context, the history and the facts, never on the garbage answers)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from c2s_engine.errors import GroupingError, ObsColumnError, QuestionError, TaskOptionError
from c2s_engine.models import load_model
from c2s_engine.tasks.ask import answer_question, qa_history
from c2s_engine.tasks.facts import dataset_facts, marker_genes, order_cells
from c2s_engine.tasks.runtime import TaskNotSupportedError
from c2s_engine.validation import prepare

pytest_plugins = ["tiny_checkpoints"]

TEXT_CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16,
             "tasks": ["cluster_captioning", "natural_language_interpretation",
                       "question_answering"]}
GENES = ["CD3E", "MS4A1", "LYZ", "NKG7", "B2M", "ACTB", "GAPDH", "FTL"]


@pytest.fixture(scope="module")
def text_model(build_checkpoint, tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp("text") / "gpt_neox", "gpt_neox",
                            card=TEXT_CARD)
    return load_model(str(path), precision="fp32", device="cpu")


@pytest.fixture(scope="module")
def prepared(pbmc68k):
    adata = pbmc68k[:40].copy()
    prepare(adata)
    # Three clusters keep the facts short enough for the tiny model's 256-token context.
    adata.obs["group"] = pd.Categorical(
        adata.obs["louvain"].astype(str).map({"0": "T", "1": "Mono"}).fillna("Other"))
    return adata


@pytest.fixture
def adata(prepared):
    return prepared.copy()


def marker_data() -> ad.AnnData:
    """19 cells: clusters T, B, Mono of 6 cells, each with one strongly expressed marker
    (CD3E, MS4A1, LYZ), and a one-cell cluster."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(2, (19, len(GENES))).astype(np.float32)
    for i in range(3):
        counts[i * 6:(i + 1) * 6, i] += 60
    labels = ["T"] * 6 + ["B"] * 6 + ["Mono"] * 6 + ["Single"]
    adata = ad.AnnData(counts, obs=pd.DataFrame({"cl": pd.Categorical(labels)},
                                                index=[f"c{i}" for i in range(19)]),
                       var=pd.DataFrame(index=GENES))
    prepare(adata)
    return adata


def test_facts_are_correct_on_a_dataset_with_one_marker_per_cluster():
    adata = marker_data()
    facts = dataset_facts(adata, "cl", n_markers=3)
    assert (facts.n_cells, facts.n_genes, facts.organism) == (19, 8, "Homo sapiens")
    # Largest first, ties in name order.
    assert [(c.name, c.n_cells) for c in facts.clusters] == [
        ("B", 6), ("Mono", 6), ("T", 6), ("Single", 1)]
    top = {c.name: c.markers[0] for c in facts.clusters if c.markers}
    assert top == {"T": "CD3E", "B": "MS4A1", "Mono": "LYZ"}
    assert all(len(c.markers) <= 3 for c in facts.clusters)
    assert facts.cluster("Single").markers == [] and facts.untested == ["Single"]
    # The three boosted genes have the highest mean expression.
    assert set(facts.top_expressed[:3]) == {"CD3E", "MS4A1", "LYZ"}
    text = facts.to_text(focus="Mono")
    assert text.startswith("19 cells, 8 genes, Homo sapiens.")
    assert "The question is about cluster Mono of cl (6 cells; markers LYZ" in text
    assert "4 clusters by cl: B (6 cells; markers MS4A1" in text and "Single (1 cell)." in text
    short = facts.to_text(max_clusters=1)
    assert "4 clusters by cl: B (6 cells; markers MS4A1" in short
    assert short.endswith("and 3 smaller clusters (13 cells).")


def test_markers_match_scanpy_and_are_cached_until_the_grouping_changes(monkeypatch):
    adata = marker_data()
    adata.uns["rank_genes_groups"] = {"mine": "untouched"}
    first = marker_genes(adata, "cl", n_genes=4, method="t-test")
    # Same answer as scanpy run by hand on the C2S matrix, groups of >= 2 cells vs rest.
    expected = adata.copy()
    expected.X = expected.layers["c2s_norm"]
    expected.uns["log1p"] = {"base": 10}
    sc.tl.rank_genes_groups(expected, "cl", groups=["B", "Mono", "T"], reference="rest",
                            method="t-test", use_raw=False)
    for group in ("B", "Mono", "T"):
        table = sc.get.rank_genes_groups_df(expected, group=group)
        assert first[group] == list(table.loc[table["scores"] > 0, "names"][:4])
    assert adata.uns["rank_genes_groups"] == {"mine": "untouched"}

    calls = []
    original = sc.tl.rank_genes_groups
    monkeypatch.setattr(sc.tl, "rank_genes_groups",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    assert marker_genes(adata, "cl", n_genes=2, method="t-test") == {
        k: v[:2] for k, v in first.items()}
    assert calls == []  # fewer genes of the same test: from the cache
    adata.obs.loc["c0", "cl"] = "B"
    marker_genes(adata, "cl", n_genes=2, method="t-test")
    assert calls == [1]  # a changed grouping is recomputed


def test_one_cluster_and_bad_options_give_clear_errors():
    adata = marker_data()
    adata.obs["all"] = "x"
    assert dataset_facts(adata, "all").untested == ["x"]
    with pytest.raises(ObsColumnError, match="'nope' is not in adata.obs.*cl"):
        dataset_facts(adata, "nope")
    with pytest.raises(TaskOptionError, match="unknown marker method 'magic'"):
        marker_genes(adata, "cl", method="magic")


def test_order_cells_takes_turns_between_clusters():
    adata = marker_data()
    order = order_cells(adata, seed=3, groupby="cl")
    labels = adata.obs["cl"].to_numpy()[order]
    assert sorted(order) == list(range(19))
    assert set(labels[:4]) == {"B", "Mono", "T", "Single"}
    assert list(labels[4:7]) == ["B", "Mono", "T"]
    assert np.array_equal(order, order_cells(adata, seed=3, groupby="cl"))
    assert not np.array_equal(order, order_cells(adata, seed=4, groupby="cl"))


def test_context_holds_the_scoped_cells_and_the_facts(adata, text_model):
    answer = answer_question(adata, "  Which cell type   is this? ", text_model, scope="Mono",
                             groupby="group", n_cells=5, max_new_tokens=8, n_markers=3)
    members = set(adata.obs_names[adata.obs["group"] == "Mono"])
    assert answer.question == "Which cell type is this?"
    assert answer.scope == "Mono" and answer.scope_kind == "cluster"
    assert 1 <= len(answer.cells_used) <= 5 and set(answer.cells_used) <= members
    for i, sentence in enumerate(answer.sentences, start=1):
        assert f"Cell {i}:\n{sentence}.\n" in answer.prompt
    assert f"Dataset facts: {answer.facts_text}\n" in answer.prompt
    assert "Question: Which cell type is this?\nAnswer:" in answer.prompt
    mono = answer.facts.cluster("Mono")
    assert mono.n_cells == len(members)
    assert f"cluster Mono of group ({mono.n_cells} cells; markers {', '.join(mono.markers)})" \
        in answer.facts_text
    assert answer.n_tokens <= answer.budget == 256 - 8
    shared = [g for g in answer.genes if all(g in s.split() for s in answer.sentences)]
    assert answer.genes[:len(shared)] == shared  # genes in every cell come first


def test_a_list_of_cells_is_used_in_its_order(adata, text_model):
    cells = list(adata.obs_names[[7, 3, 11]])
    answer = answer_question(adata, "What are these?", text_model, scope=cells,
                             max_new_tokens=8)
    assert answer.cells_used == cells and answer.scope_kind == "cells"
    assert answer.facts.clusters == []  # no groupby: facts without clusters


def test_bad_questions_and_scopes_are_refused(adata, text_model):
    with pytest.raises(QuestionError, match="the question is empty"):
        answer_question(adata, "   ", text_model)
    with pytest.raises(GroupingError, match="group has no cluster 'NK'; its clusters are "
                       "'Mono', 'Other', 'T'. Fix: pass one of these names"):
        answer_question(adata, "Why?", text_model, scope="NK", groupby="group")
    with pytest.raises(GroupingError, match="no groupby column was given"):
        answer_question(adata, "Why?", text_model, scope="Mono")
    with pytest.raises(GroupingError, match="1 cell\\(s\\) of the scope are not in obs_names: "
                       "'ghost'"):
        answer_question(adata, "Why?", text_model, scope=[adata.obs_names[0], "ghost"])
    assert "qa" not in adata.uns["c2s"]


def test_history_survives_h5ad_and_repeats_hit_the_cache(adata, text_model, tmp_path):
    first = answer_question(adata, "How many clusters?", text_model, groupby="group",
                            max_new_tokens=8)
    again = answer_question(adata, "How many clusters?", text_model, groupby="group",
                            max_new_tokens=8)
    assert again.answer == first.answer and again.cells_used == first.cells_used
    assert again.provenance["calls"]["n_cached"] == 1
    answer_question(adata, "Is Mono large?", text_model, scope="Mono", groupby="group",
                    max_new_tokens=8)
    adata.write_h5ad(tmp_path / "qa.h5ad")
    back = ad.read_h5ad(tmp_path / "qa.h5ad")
    history = qa_history(back)
    assert [h["question"] for h in history] == [
        "How many clusters?", "How many clusters?", "Is Mono large?"]
    assert history[0]["answer"] == first.answer and history[0]["cells_used"] == first.cells_used
    assert history[2]["scope"] == "Mono" and history[2]["scope_kind"] == "cluster"
    assert history[0]["facts"] == first.facts_text
    prov = back.uns["c2s"]["answer_question"]
    assert prov["task"] == "question_answering" and prov["card_lists_task"]
    assert prov["params"]["scope"] == "Mono"
    # Asking on the read-back data appends to the same history.
    answer_question(back, "And T?", text_model, scope="T", groupby="group", max_new_tokens=8)
    assert [h["question"] for h in qa_history(back)][-1] == "And T?"


def test_a_model_whose_card_lacks_the_task(adata, tiny_gemma2_dir):
    model = load_model(str(tiny_gemma2_dir), precision="fp32", device="cpu")
    with pytest.raises(TaskNotSupportedError, match="not trained for question_answering"):
        answer_question(adata, "Why?", model)
    with pytest.warns(UserWarning, match="card_lists_task=False"):
        answer = answer_question(adata, "Why?", model, max_new_tokens=4, n_cells=2,
                                 allow_unsupported=True)
    assert answer.provenance["card_lists_task"] is False
