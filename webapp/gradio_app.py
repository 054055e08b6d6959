"""Gradio front end of C2S Studio: chat with a dataset and annotate it, in a browser or by script.

Start it with ``python -m webapp.gradio_app [--host 127.0.0.1] [--port 7860] [--model demo]``.
Besides the two tabs, the app serves two named API endpoints for ``gradio_client``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    answer, context = client.predict(handle_file("data.h5ad"), "Which cell types are here?",
                                     api_name="/ask")
    table, h5ad_path, summary = client.predict(handle_file("data.h5ad"), "cell_type",
                                               api_name="/annotate")

``/ask(file, question, groupby='', scope='dataset', n_cells=20, max_new_tokens=0)`` returns
the answer and the context it was given (``scope``, ``cells_used``, ``sentences``, ``genes``,
``facts``, ``n_tokens``, ``budget``, ``model``); ``max_new_tokens=0`` picks the answer length
as the Streamlit app does. ``/annotate(file, label_column='', groupby='')`` returns
the predictions table (one row per cell), the annotated ``.h5ad`` (``obs['c2s_cell_type']`` and
provenance in ``uns['c2s']['annotate']``) and a Markdown summary. Errors come back as one line,
``message. Fix: fix.``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from anndata import AnnData

from c2s_engine.errors import C2SError
from c2s_engine.readers import read
from c2s_engine.tasks.annotate import annotate, obs_keys
from c2s_engine.tasks.ask import DATASET_SCOPE, answer_question
from c2s_engine.tasks.ask import TASK as ASK_TASK
from c2s_engine.tasks.runtime import ModelLike, resolve_model
from c2s_engine.validation import prepare
from webapp.text_tasks import default_new_tokens

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MODEL = "demo"
# Suffixes of the formats c2s_engine.readers.read understands as single files.
FILE_TYPES = [".h5ad", ".h5", ".loom", ".zip", ".csv", ".tsv", ".gz"]
# Annotated files are copied into Gradio's cache when returned; our copies only need to
# outlive that, and everything in Gradio's cache is dropped after a day.
_OUTPUT_MAX_AGE_S = 3600
_CACHE_CLEANUP = (3600, 86400)


def _no_file_error() -> gr.Error:
    return gr.Error("No dataset was uploaded. Fix: upload an .h5ad file (or another format the "
                    "engine reads: .h5, .loom, a .zip of a 10x folder, .csv/.tsv).")


def _load(path: str | None) -> AnnData:
    """Read and prepare an uploaded file with the engine (read never unpickles anything)."""
    if not path:
        raise _no_file_error()
    adata = read(path)
    prepare(adata)
    return adata


def _optional(text: str | None) -> str | None:
    """A text box's value, with the empty box meaning 'not given'."""
    return (text or "").strip() or None


def _user_error(err: Exception) -> gr.Error:
    """One line for the user: the engine's own message, or the kind of an unexpected failure."""
    if isinstance(err, C2SError):
        return gr.Error(str(err))
    logger.exception("unexpected error in the Gradio app")
    return gr.Error(f"Unexpected error ({type(err).__name__}: {err}). Fix: check the input file; "
                    "if it is valid, report this message together with the server log.")


def _output_folder() -> Path:
    """A fresh folder for one annotated file; folders older than an hour are removed first."""
    root = Path(tempfile.gettempdir()) / "c2s-gradio-outputs"
    root.mkdir(exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        if old.is_dir() and now - old.stat().st_mtime > _OUTPUT_MAX_AGE_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = root / uuid.uuid4().hex
    folder.mkdir()
    return folder


def ask_dataset(path: str | None, question: str, groupby: str = "", scope: str = DATASET_SCOPE,
                n_cells: float = 20, max_new_tokens: float = 0, *,
                model: ModelLike = DEFAULT_MODEL) -> tuple[str, dict[str, Any]]:
    """Answer a question about the dataset in ``path`` (the ``/ask`` endpoint).

    Parameters
    ----------
    path
        The uploaded file.
    question
        The question, in words.
    groupby
        obs column of the clusters ('' for none): their sizes and markers go into the context.
    scope
        ``'dataset'`` or a cluster of ``groupby``.
    n_cells
        Cells offered to the prompt (fewer are used when they do not fit the context).
    max_new_tokens
        Longest answer in tokens; this much of the model's context is kept free for it. 0
        chooses as the Streamlit app does: the template's reserve, at most a quarter of the
        model's context.
    model
        Model name or loaded model.

    Returns
    -------
    tuple
        The answer, and the context used: ``question``, ``scope``, ``scope_kind``, ``groupby``,
        ``cells_used``, ``sentences``, ``genes``, ``facts``, ``n_tokens``, ``budget``,
        ``model``.

    Raises
    ------
    gradio.Error
        Any problem with the input, as one line with its fix.
    """
    try:
        adata = _load(path)
        loaded = resolve_model(model)
        result = answer_question(adata, question, loaded,
                                 scope=_optional(scope) or DATASET_SCOPE,
                                 groupby=_optional(groupby), n_cells=int(n_cells),
                                 max_new_tokens=int(max_new_tokens)
                                 or default_new_tokens(ASK_TASK, loaded))
    except gr.Error:
        raise
    except Exception as err:
        raise _user_error(err) from err
    context = {"question": result.question, "scope": result.scope,
               "scope_kind": result.scope_kind, "groupby": result.groupby,
               "cells_used": list(result.cells_used), "sentences": list(result.sentences),
               "genes": list(result.genes), "facts": result.facts_text,
               "n_tokens": int(result.n_tokens), "budget": int(result.budget),
               "model": str(result.provenance.get("model", ""))}
    return result.answer, context


def annotate_dataset(path: str | None, label_column: str = "", groupby: str = "", *,
                     model: ModelLike = DEFAULT_MODEL, progress: Any = None
                     ) -> tuple[pd.DataFrame, str, str]:
    """Annotate every cell of the dataset in ``path`` (the ``/annotate`` endpoint).

    Parameters
    ----------
    path
        The uploaded file.
    label_column
        obs column whose values are the candidate cell types (scored, with a confidence, and
        compared with the prediction); '' lets the model name each type in free text.
    groupby
        obs column of clusters for a majority label per cluster ('' for none).
    model
        Model name or loaded model.
    progress
        ``progress(done, total, cells_per_s)`` callback.

    Returns
    -------
    tuple
        The table (``cell``, ``predicted cell type``, then ``confidence``, the labels and the
        cluster majority when available; one row per cell), the path of the annotated
        ``.h5ad`` and a Markdown summary.

    Raises
    ------
    gradio.Error
        Any problem with the input, as one line with its fix.
    """
    try:
        adata = _load(path)
        result = annotate(adata, model, labels_from=_optional(label_column),
                          groupby=_optional(groupby), progress=progress)
        stem = Path(path or "dataset").name.removesuffix(".gz").rsplit(".", 1)[0] or "dataset"
        out = _output_folder() / f"{stem}_annotated.h5ad"
        adata.write_h5ad(out)
    except gr.Error:
        raise
    except Exception as err:
        raise _user_error(err) from err
    keys = obs_keys()
    table = pd.DataFrame({"cell": adata.obs_names.astype(str),
                          "predicted cell type": adata.obs[keys["prediction"]].astype(str)})
    if result.confidence is not None:
        table["confidence"] = result.confidence.to_numpy().round(4)
    if _optional(label_column):
        table[f"labels ({label_column})"] = adata.obs[label_column].astype(str).to_numpy()
    if keys["cluster"] in adata.obs:
        table["cluster majority"] = adata.obs[keys["cluster"]].astype(str).to_numpy()
    return table.reset_index(drop=True), str(out), _summary(adata, result)


def _summary(adata: AnnData, result: Any) -> str:
    counts = result.cell_type.astype(str).value_counts()
    lines = [f"Annotated **{adata.n_obs:,} cells** with {result.provenance.get('model', '')} "
             f"(mode {result.mode}).", "",
             "| predicted cell type | cells |", "|---|---|",
             *(f"| {label} | {n:,} |" for label, n in counts.head(15).items())]
    if result.metrics is not None:
        lines += ["", f"Agreement with the labels: accuracy **{result.metrics.accuracy:.1%}**, "
                  f"macro-F1 **{result.metrics.macro_f1:.3f}** over "
                  f"{result.metrics.n_cells:,} cells."]
    return "\n".join(lines)


def _add_turn(question: str, answer: str, history: list[dict[str, str]] | None
              ) -> tuple[list[dict[str, str]], str]:
    """The chat with the latest question and answer appended, and an empty question box."""
    history = [*(history or []), {"role": "user", "content": question},
               {"role": "assistant", "content": answer}]
    return history, ""


def build_app(model: ModelLike = DEFAULT_MODEL) -> gr.Blocks:
    """The Gradio app: a chat tab (``/ask``) and an annotate tab (``/annotate``).

    Parameters
    ----------
    model
        Model name (``"demo"`` by default: ``assets/models/demo`` or ``$C2S_DEMO_MODEL``) or a
        loaded model; a name is loaded once per process, at the first request.

    Returns
    -------
    gradio.Blocks
        Not launched yet (see :func:`launch`).
    """

    def ask(path: str | None, question: str, groupby: str, scope: str, n_cells: float,
            max_new_tokens: float) -> tuple[str, dict[str, Any]]:
        return ask_dataset(path, question, groupby, scope, n_cells, max_new_tokens, model=model)

    def annotate_cells(path: str | None, label_column: str, groupby: str,
                       progress: gr.Progress = gr.Progress()  # noqa: B008 (Gradio's idiom)
                       ) -> tuple[pd.DataFrame, str, str]:
        def report(done: int, total: int, per_second: float) -> None:
            progress((done, total), desc=f"annotating ({per_second:.1f} cells/s)", unit="cells")

        return annotate_dataset(path, label_column, groupby, model=model, progress=report)

    # analytics off: no usage reports or version checks leave the machine.
    with gr.Blocks(title="C2S Studio", delete_cache=_CACHE_CLEANUP,
                   analytics_enabled=False) as app:
        gr.Markdown("# C2S Studio\nAsk questions about a single-cell dataset, or annotate its "
                    "cell types, with a Cell2Sentence model. Upload an `.h5ad` file first.")
        with gr.Tab("Ask questions"):
            gr.Markdown("The model answers from dataset facts (size, organism, cluster markers) "
                        "and the top genes of a sample of cells; the context it used is shown "
                        "below the chat.")
            with gr.Row():
                ask_file = gr.File(label="Dataset", file_types=FILE_TYPES, type="filepath")
                with gr.Column():
                    ask_groupby = gr.Textbox("", label="Cluster column (optional)",
                                             placeholder="e.g. louvain")
                    ask_scope = gr.Textbox(label="Scope", value=DATASET_SCOPE,
                                           info="'dataset', or one cluster of the column above")
                    ask_cells = gr.Slider(1, 200, value=20, step=1, label="Cells in the context")
                    ask_tokens = gr.Slider(0, 1024, value=0, step=16,
                                           label="Longest answer (tokens; 0 = automatic)")
            chat = gr.Chatbot(label="Chat", height=360)
            question = gr.Textbox(label="Question",
                                  placeholder="Which cell types are in this sample?")
            ask_button = gr.Button("Ask", variant="primary")
            answer = gr.Textbox(label="Answer", visible=False)
            with gr.Accordion("Context used", open=False):
                context = gr.JSON(label="Cells, genes and facts given to the model")
            ask_event = ask_button.click(
                ask, [ask_file, question, ask_groupby, ask_scope, ask_cells, ask_tokens],
                [answer, context],
                api_name="ask")
            ask_event.success(_add_turn, [question, answer, chat], [chat, question],
                              api_visibility="private")
        with gr.Tab("Annotate"):
            gr.Markdown("Predict the cell type of every cell. With a label column, the model "
                        "scores those labels (with a confidence) and is compared with them; "
                        "without, it names each type in free text.")
            with gr.Row():
                ann_file = gr.File(label="Dataset", file_types=FILE_TYPES, type="filepath")
                with gr.Column():
                    ann_labels = gr.Textbox("", label="Label column (optional)",
                                            placeholder="e.g. bulk_labels")
                    ann_groupby = gr.Textbox("", label="Cluster column for a majority vote "
                                                 "(optional)",
                                             placeholder="e.g. louvain")
            ann_button = gr.Button("Annotate", variant="primary")
            summary = gr.Markdown()
            table = gr.Dataframe(label="Predictions", interactive=False)
            annotated = gr.File(label="Annotated dataset (.h5ad)", interactive=False)
            ann_button.click(annotate_cells, [ann_file, ann_labels, ann_groupby],
                             [table, annotated, summary], api_name="annotate")
    return app


def launch(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model: ModelLike = DEFAULT_MODEL,
           *, block: bool = True) -> gr.Blocks:
    """Serve the Gradio app.

    Parameters
    ----------
    host
        Interface to listen on; the default keeps the app reachable from this machine only.
    port
        TCP port of the server.
    model
        See :func:`build_app`.
    block
        Serve until interrupted (True), or start the server in the background and return at
        once (call ``.close()`` on the result to stop it).

    Returns
    -------
    gradio.Blocks
        The running app.
    """
    app = build_app(model)
    app.queue(default_concurrency_limit=1)  # one model call at a time: the model is shared
    app.launch(server_name=host, server_port=int(port), share=False, ssr_mode=False,
               prevent_thread_lock=not block, quiet=not block, show_error=True)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m webapp.gradio_app [--host] [--port] [--model]``."""
    parser = argparse.ArgumentParser(prog="python -m webapp.gradio_app",
                                     description="Serve the C2S Studio Gradio app and its API.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name or folder (default demo: assets/models/demo, or the "
                             "folder in $C2S_DEMO_MODEL)")
    args = parser.parse_args(argv)
    try:
        # Load now, so a missing model is reported before the server starts.
        loaded = resolve_model(args.model)
    except C2SError as err:
        print(f"error: {err}")
        return 2
    print(f"C2S Studio (Gradio): open http://{args.host}:{args.port} (model {loaded.name}; "
          "Ctrl+C to stop).", flush=True)
    launch(args.host, args.port, loaded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
