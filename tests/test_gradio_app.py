"""The Gradio app, served on localhost and driven through its named API with gradio_client."""

from __future__ import annotations

import socket

import anndata as ad
import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from c2s_engine.models import load_model
from c2s_engine.readers import read
from c2s_engine.tasks.ask import answer_question
from c2s_engine.validation import prepare
from webapp import gradio_app

pytest_plugins = ["tiny_checkpoints"]

CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16}
N_CELLS = 40
QUESTION = "Which cell types are in this sample?"
# The tiny model's context is 256 tokens: keep most of it for the prompt.
ANSWER_TOKENS = 32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model(build_checkpoint, tmp_path_factory):
    """A tiny model whose card lists question answering and cell type prediction."""
    folder = build_checkpoint(tmp_path_factory.mktemp("gradio-model") / "qa-annotate", "gemma2",
                              card={**CARD, "tasks": ["question_answering",
                                                      "cell_type_prediction"]})
    return load_model(str(folder))


@pytest.fixture(scope="module")
def small_h5ad(pbmc68k, tmp_path_factory):
    """The first 40 cells of pbmc68k_reduced as an .h5ad file, as a user would upload it."""
    path = tmp_path_factory.mktemp("gradio-data") / "pbmc40.h5ad"
    pbmc68k[:N_CELLS].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def server(model):
    """The app on a free localhost port, started with the module's :func:`launch`."""
    app = gradio_app.launch(port=_free_port(), model=model, block=False)
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.local_url, verbose=False)


def test_the_server_binds_localhost_and_names_its_endpoints(server, client):
    assert server.server_name == "127.0.0.1"
    assert server.local_url.startswith("http://127.0.0.1:")
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/ask", "/annotate"} <= set(endpoints)
    ask_params = [p["parameter_name"] for p in endpoints["/ask"]["parameters"]]
    assert ask_params == ["path", "question", "groupby", "scope", "n_cells", "max_new_tokens"]
    # The chat history update is UI plumbing, not an API.
    assert "/_add_turn" not in endpoints


def test_ask_returns_the_engine_answer_and_the_context_it_used(client, model, small_h5ad):
    answer, context = client.predict(handle_file(str(small_h5ad)), QUESTION, "louvain",
                                     "dataset", 8, ANSWER_TOKENS, api_name="/ask")
    # The same question through the engine directly gives the same (greedy) answer.
    adata = read(small_h5ad)
    prepare(adata)
    expected = answer_question(adata, QUESTION, model, groupby="louvain", n_cells=8,
                               max_new_tokens=ANSWER_TOKENS)
    assert isinstance(answer, str)
    assert answer == expected.answer
    assert context["question"] == QUESTION
    assert context["scope"] == "dataset" and context["scope_kind"] == "dataset"
    assert context["groupby"] == "louvain"
    assert context["cells_used"] == expected.cells_used
    assert 1 <= len(context["cells_used"]) <= 8
    assert set(context["cells_used"]) <= set(adata.obs_names)
    assert len(context["sentences"]) == len(context["cells_used"])
    assert context["facts"].startswith(f"{N_CELLS} cells, ")
    assert "clusters by louvain" in context["facts"]
    assert 0 < context["n_tokens"] <= context["budget"]
    assert context["model"] == model.name


def test_ask_by_default_keeps_a_quarter_of_a_small_context_for_the_answer(client, small_h5ad):
    _, context = client.predict(handle_file(str(small_h5ad)), QUESTION, api_name="/ask")
    # The tiny card's context is 256 tokens: 64 are kept for the answer, as on the Ask page.
    assert context["budget"] == 256 - 64
    assert context["scope"] == "dataset" and context["groupby"] == ""
    assert "clusters by" not in context["facts"]


def test_ask_scoped_to_one_cluster_uses_only_its_cells(client, small_h5ad, pbmc68k):
    louvain = pbmc68k.obs["louvain"].iloc[:N_CELLS].astype(str)
    cluster = str(louvain.value_counts().index[0])
    members = set(louvain.index[louvain == cluster])
    _, context = client.predict(handle_file(str(small_h5ad)), "What is this cluster?", "louvain",
                                cluster, 5, ANSWER_TOKENS, api_name="/ask")
    assert context["scope"] == cluster and context["scope_kind"] == "cluster"
    assert 1 <= len(context["cells_used"]) <= 5
    assert set(context["cells_used"]) <= members
    assert f"The question is about cluster {cluster} of louvain" in context["facts"]


def test_annotate_returns_a_row_per_cell_and_the_annotated_file(client, small_h5ad, pbmc68k):
    table, h5ad_path, summary = client.predict(handle_file(str(small_h5ad)), "bulk_labels",
                                               "louvain", api_name="/annotate")
    assert table["headers"] == ["cell", "predicted cell type", "confidence",
                                "labels (bulk_labels)", "cluster majority"]
    rows = table["data"]
    assert len(rows) == N_CELLS
    assert [row[0] for row in rows] == list(pbmc68k.obs_names[:N_CELLS])
    candidates = set(pbmc68k.obs["bulk_labels"].iloc[:N_CELLS].astype(str))
    assert {row[1] for row in rows} <= candidates
    assert all(0.0 < float(row[2]) <= 1.0 for row in rows)
    assert [row[3] for row in rows] == list(pbmc68k.obs["bulk_labels"].iloc[:N_CELLS].astype(str))

    annotated = ad.read_h5ad(h5ad_path)
    assert h5ad_path.endswith("pbmc40_annotated.h5ad")
    assert list(annotated.obs_names) == [row[0] for row in rows]
    assert list(annotated.obs["c2s_cell_type"].astype(str)) == [row[1] for row in rows]
    assert "c2s_confidence" in annotated.obs and "c2s_cluster_cell_type" in annotated.obs
    prov = annotated.uns["c2s"]["annotate"]
    assert prov["task"] == "cell_type_prediction"
    assert list(prov["candidates"]) == sorted(candidates, key=list(
        pbmc68k.obs["bulk_labels"].cat.categories).index)
    assert f"Annotated **{N_CELLS} cells**" in summary
    assert "accuracy" in summary


def test_annotate_without_labels_names_types_in_free_text(client, small_h5ad):
    table, h5ad_path, summary = client.predict(handle_file(str(small_h5ad)), "", "",
                                               api_name="/annotate")
    assert table["headers"] == ["cell", "predicted cell type"]
    assert len(table["data"]) == N_CELLS
    annotated = ad.read_h5ad(h5ad_path)
    assert "c2s_cell_type_generated" in annotated.obs
    assert "mode generate" in summary


@pytest.mark.parametrize(("endpoint", "args", "message"), [
    ("/ask", ("   ",), "the question is empty. Fix: type a question about the dataset"),
    ("/ask", (QUESTION, "", "no-such-cluster", 5, ANSWER_TOKENS),
     "scope 'no-such-cluster' names a cluster but no groupby column was given. Fix: pass "
     "groupby="),
    ("/annotate", ("no_such_column",),
     "the labels_from column 'no_such_column' is not in adata.obs. Fix: use one of the obs "
     "columns"),
])
def test_bad_inputs_come_back_as_one_line_with_the_fix(client, small_h5ad, endpoint, args,
                                                       message):
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(small_h5ad)), *args, api_name=endpoint)
    text = str(caught.value)
    assert message in text
    assert "Traceback" not in text and "\n" not in text.strip()


def test_a_request_without_a_file_asks_for_one(client):
    with pytest.raises(AppError, match="No dataset was uploaded. Fix: upload an .h5ad file"):
        client.predict(None, QUESTION, api_name="/ask")


def test_a_model_not_trained_for_annotation_is_refused_with_alternatives(
        build_checkpoint, tmp_path, small_h5ad):
    folder = build_checkpoint(tmp_path / "qa-only", "gemma2",
                              card={**CARD, "tasks": ["question_answering"]})
    with pytest.raises(gr.Error) as caught:
        gradio_app.annotate_dataset(str(small_h5ad), "bulk_labels", model=load_model(str(folder)))
    assert "was not trained for cell_type_prediction" in caught.value.message
    assert "Fix:" in caught.value.message


def test_the_command_line_reports_a_missing_model_before_serving(tmp_path, capsys):
    assert gradio_app.main(["--model", str(tmp_path / "absent"), "--port", "1"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("error: ") and "does not exist" in out and "Fix:" in out
