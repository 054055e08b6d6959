"""The Ask questions page (AppTest) and its chat history and transcript."""

from __future__ import annotations

import json

import pytest

from c2s_engine.models import load_model
from c2s_engine.tasks import ask as ask_task
from c2s_engine.tasks.facts import DatasetFacts
from c2s_engine.tasks.runtime import models_supporting
from webapp import state, text_tasks

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]

PAGE = "pages/5_Ask_questions.py"
JOB = "c2s_ask_job"
QUESTION = "Which cell types are in this sample?"


def _finish_job(at):
    """Wait for the page's background job, then rerun the page so it collects the outcome
    (a quick job may already have been collected by the rerun that started it)."""
    if JOB in at.session_state:
        assert at.session_state[JOB].wait(timeout=90)
        at.run()
    assert not at.exception
    return at


def _ask(at, question: str = QUESTION, **widgets):
    at.number_input(key="c2s_ask_max_tokens").set_value(6)
    at.number_input(key="c2s_ask_n_cells").set_value(4)
    for key, value in widgets.items():
        getattr(at, "radio" if key == "c2s_ask_scope" else "selectbox")(key=key).set_value(value)
    at.chat_input(key="c2s_ask_input").set_value(question).run()
    assert not at.exception
    return _finish_job(at)


def _expected(dataset, model_dir, **options):
    """The engine's answer for the page's settings, on a private copy."""
    return ask_task.answer_question(dataset.adata.copy(), QUESTION, load_model(str(model_dir)),
                                    n_cells=4, top_k=16, max_new_tokens=6, seed=0, **options)


def _chat(at) -> list[tuple[str, list[str]]]:
    """(role, texts) of every chat message on the page."""
    return [(m.name, [str(t.value) for t in m.text]) for m in at.get("chat_message")]


# --- bad inputs ---------------------------------------------------------------------------------


def test_without_a_dataset_the_page_points_to_upload(webapp):
    at = webapp.open(PAGE)
    assert not at.exception
    assert at.title[0].value == "Ask questions"
    assert webapp.texts(at.info) == [
        "No dataset is loaded. Fix: load your data, or the example dataset, on the Upload data "
        "page first."]
    assert not at.chat_input


def test_a_model_without_question_answering_offers_the_ones_that_have_it(
        webapp, small_example, monkeypatch, tiny_gemma2_dir):
    monkeypatch.setenv("C2S_DEMO_MODEL", str(tiny_gemma2_dir))
    at = webapp.open(PAGE, dataset=small_example)
    assert not at.exception
    assert webapp.texts(at.warning) == [
        "The current model, demo, was not trained for question answering (its model card "
        "lists: cell_type_prediction, spatial_*), so its answers here would not mean anything."]
    offered = [b.label for b in at.main.button]
    # Every model that lists the task except the current one ("demo", here the test's
    # model), shipped models first.
    assert offered == [f"Use {name}" for name in models_supporting("question_answering")
                       if name != "demo"]
    assert not at.chat_input


def test_a_blank_question_gets_the_engines_message_and_keeps_the_chat(webapp, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    _ask(at)
    chat = _chat(at)
    _ask(at, "   ")
    assert webapp.texts(at.error) == [
        "the question is empty. Fix: type a question about the dataset, e.g. 'Which cell types "
        "are in this sample?'."]
    assert _chat(at) == chat and len(text_tasks.chat_history(at.session_state)) == 1


def test_a_failed_answer_names_the_question_and_keeps_the_chat(webapp, small_example,
                                                               monkeypatch):
    at = webapp.open(PAGE, dataset=small_example)
    _ask(at)
    chat = _chat(at)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error")

    monkeypatch.setattr(ask_task, "answer_question", broken)
    _ask(at, "And the B cells?")
    assert webapp.texts(at.error) == [
        "Not answered: \u201cAnd the B cells?\u201d. Could not finish answering the question "
        "(RuntimeError: CUDA error). Fix: check the inputs and try again; if it happens again, "
        "report this error together with the server log."]
    assert _chat(at) == chat and len(text_tasks.chat_history(at.session_state)) == 1


# --- happy paths --------------------------------------------------------------------------------


def test_a_question_about_the_dataset_shows_its_context_and_survives_a_refresh(
        webapp, webapp_env, small_example, all_tasks_model_dir):
    at = webapp.open(PAGE, dataset=small_example)
    assert at.radio(key="c2s_ask_scope").options == ["Whole dataset", "One cluster"]
    assert at.radio(key="c2s_ask_scope").value == "Whole dataset"
    assert at.selectbox(key="c2s_ask_groupby").value == "louvain"
    assert at.number_input(key="c2s_ask_max_tokens").value == 64
    assert "draw a lasso or box on the map" in " ".join(webapp.texts(at.caption))
    _ask(at)

    expected = _expected(small_example, all_tasks_model_dir, groupby="louvain")
    chat = _chat(at)
    assert chat[0] == ("user", [QUESTION])
    assert chat[1][0] == "assistant"
    assert chat[1][1][0] == (expected.answer or "(the model wrote nothing)")
    # The context: facts, shared genes, the cells, and the exact prompt.
    assert chat[1][1][1:] == [expected.facts_text, ", ".join(expected.genes),
                              ", ".join(expected.cells_used)]
    (expander,) = [e for e in at.expander if e.label.startswith("Context used")]
    n_used = len(expected.cells_used)
    assert expander.label == (f"Context used: whole dataset, {n_used} cell"
                              f"{'s' if n_used != 1 else ''}, "
                              f"{expected.n_tokens} of {expected.budget} prompt tokens")
    assert at.code[0].value == expected.prompt
    assert [d.label for d in at.get("download_button")] == ["Export the conversation (Markdown)"]
    # The engine's own history is in the data too.
    (qa,) = ask_task.qa_history(at.session_state[state.DATASET_KEY].adata)
    assert qa["question"] == QUESTION and qa["cells_used"] == expected.cells_used

    workspace = at.session_state[state.WORKSPACE_KEY]
    saved = json.loads((webapp_env / workspace.id / "chat.json").read_text())
    assert saved["dataset"] == small_example.name
    (entry,) = saved["entries"]
    assert entry["cells_used"] == expected.cells_used and entry["scope"] == "whole dataset"

    # A refreshed page (new session, same workspace in the URL) gets data and chat back.
    again = webapp.open(PAGE, query={"ws": workspace.id})
    assert not again.exception
    assert _chat(again) == chat


def test_a_question_about_one_cluster_uses_only_its_cells(webapp, small_example,
                                                          all_tasks_model_dir):
    at = webapp.open(PAGE, dataset=small_example)
    at.radio(key="c2s_ask_scope").set_value("One cluster").run()
    assert at.selectbox(key="c2s_ask_groupby").options == ["louvain", "bulk_labels", "phase"]
    names = sorted(small_example.adata.obs["louvain"].astype(str).unique())
    assert at.selectbox(key="c2s_ask_cluster").options == names
    cluster = small_example.adata.obs["louvain"].astype(str).value_counts().index[0]
    _ask(at, c2s_ask_cluster=cluster)
    expected = _expected(small_example, all_tasks_model_dir, groupby="louvain", scope=cluster)
    (entry,) = text_tasks.chat_history(at.session_state)
    assert entry["scope"] == f"cluster {cluster} of louvain"
    assert entry["cells_used"] == expected.cells_used
    obs = small_example.adata.obs
    assert set(obs.loc[entry["cells_used"], "louvain"].astype(str)) == {cluster}
    assert _chat(at)[0] == ("user", [QUESTION])
    assert f"About: cluster {cluster} of louvain" in webapp.texts(at.caption)


def test_a_question_about_the_lasso_selection_uses_those_cells_in_order(
        webapp, small_example, all_tasks_model_dir):
    picked = list(small_example.adata.obs_names[[9, 3, 7]]) + ["not-a-cell"]
    at = webapp.open(PAGE, dataset=small_example, session={state.SELECTION_KEY: picked})
    scope = at.radio(key="c2s_ask_scope")
    assert scope.options == ["Whole dataset", "One cluster", "Selected cells (3)"]
    _ask(at, c2s_ask_scope="Selected cells")
    (entry,) = text_tasks.chat_history(at.session_state)
    assert entry["scope"] == "3 selected cells" and entry["scope_kind"] == "cells"
    expected = _expected(small_example, all_tasks_model_dir, groupby="louvain",
                         scope=picked[:3])
    assert entry["cells_used"] == expected.cells_used == picked[:len(expected.cells_used)]


def test_clearing_the_conversation(webapp, webapp_env, small_example):
    at = webapp.open(PAGE, dataset=small_example)
    _ask(at)
    at.button(key="c2s_ask_clear").click().run()
    assert not at.exception
    assert _chat(at) == [] and not at.get("download_button")
    workspace = at.session_state[state.WORKSPACE_KEY]
    saved = json.loads((webapp_env / workspace.id / "chat.json").read_text())
    assert saved == {"dataset": small_example.name, "entries": []}


# --- history and transcript ---------------------------------------------------------------------


ENTRY = {"question": "Which cells?", "answer": "T cells.", "scope": "whole dataset",
         "scope_kind": "dataset", "groupby": "louvain", "cells_used": ["c1", "c2"],
         "genes": ["CD3E", "IL7R"], "facts": "2 cells, 5 genes, Homo sapiens.", "n_tokens": 40,
         "budget": 192, "prompt": "...", "model": "demo", "time": "2026-11-21T05:00:00+00:00"}


def test_transcript_markdown_holds_questions_answers_and_context():
    assert text_tasks.transcript_markdown([ENTRY, {**ENTRY, "answer": ""}], "pbmc") == "\n".join([
        "# C2S Studio conversation", "", "Dataset: pbmc", "",
        "## Question 1", "", "**Question:** Which cells?", "",
        "**Answer** (demo, 2026-11-21T05:00:00+00:00):", "", "T cells.", "",
        "**Context used**", "", "- Scope: whole dataset", "- Cells (2): c1, c2",
        "- Genes shared by most of these cells: CD3E, IL7R",
        "- Facts: 2 cells, 5 genes, Homo sapiens.", "- Prompt tokens: 40 of 192", "",
        "## Question 2", "", "**Question:** Which cells?", "",
        "**Answer** (demo, 2026-11-21T05:00:00+00:00):", "", "(empty)", "",
        "**Context used**", "", "- Scope: whole dataset", "- Cells (2): c1, c2",
        "- Genes shared by most of these cells: CD3E, IL7R",
        "- Facts: 2 cells, 5 genes, Homo sapiens.", "- Prompt tokens: 40 of 192", ""])


@pytest.fixture
def session(webapp_env, small_example) -> dict:
    return {state.DATASET_KEY: small_example}


def test_history_belongs_to_its_dataset_and_is_read_back_from_the_workspace(session,
                                                                            small_example):
    assert text_tasks.chat_history(session) == []
    answer = ask_task.Answer(
        question="Which cells?", answer="T cells.", scope="dataset", scope_kind="dataset",
        groupby="louvain", cells_used=["c1", "c2"], sentences=["CD3E IL7R", "IL7R CD3E"],
        genes=["CD3E", "IL7R"], facts=DatasetFacts(2, 5, "Homo sapiens"),
        facts_text="2 cells, 5 genes, Homo sapiens.", prompt="...", n_tokens=40, budget=192,
        provenance={"model": "demo", "time": "2026-11-21T05:00:00+00:00"})
    assert text_tasks.add_answer(session, answer, "whole dataset") == ENTRY
    assert text_tasks.chat_history(session) == [ENTRY]
    workspace = session[state.WORKSPACE_KEY]
    fresh = {state.DATASET_KEY: small_example, state.WORKSPACE_KEY: workspace}
    assert text_tasks.chat_history(fresh) == [ENTRY]
    other = {state.DATASET_KEY: state.LoadedDataset("other.h5ad", small_example.adata,
                                                    small_example.report),
             state.WORKSPACE_KEY: workspace}
    assert text_tasks.chat_history(other) == []
