"""What the text-task pages (Caption clusters, Dataset summary, Ask questions) share, without
widgets: their defaults, the cluster columns they offer, the captions as a table, and the chat
history with its Markdown transcript.

The chat history lives in the session state and in the session's workspace (document
``chat``), tagged with the dataset it is about, so a refreshed page gets it back and another
dataset starts a new conversation. The session state is passed in as a mapping, so all of
this works (and is tested) without a browser.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import pandas as pd
from anndata import AnnData

from c2s_engine.errors import WorkspaceError
from c2s_engine.models import LoadedModel
from c2s_engine.prompts import get_template
from c2s_engine.tasks.ask import Answer
from c2s_engine.tasks.caption import captions_table
from webapp import state

CHAT_KEY = "c2s_chat"
CHAT_DOCUMENT = "chat"
#: A grouping with more values than this is not a clustering (e.g. cell barcodes).
MAX_CLUSTERS = 100
_CLUSTER_HINT = re.compile(r"leiden|louvain|cluster", re.IGNORECASE)


def default_new_tokens(task: str, loaded: LoadedModel) -> int:
    """Default answer length in tokens: the template's reserve, at most a quarter of the
    model's context, so the cells keep most of the window even on small-context models."""
    reserve = get_template(task).stop.reserve_tokens
    return max(1, min(reserve, loaded.card.context_length // 4))


def max_new_tokens_limit(loaded: LoadedModel) -> int:
    """Longest answer offered: half the model's context, so the prompt keeps at least half."""
    return max(1, loaded.card.context_length // 2)


def cluster_columns(adata: AnnData) -> list[str]:
    """obs columns that can hold clusters (non-numeric or categorical, 1 to
    :data:`MAX_CLUSTERS` values), cluster-like names (leiden, louvain, ...) first."""
    columns = [
        str(name) for name in adata.obs.columns
        if (not pd.api.types.is_numeric_dtype(adata.obs[name])
            or isinstance(adata.obs[name].dtype, pd.CategoricalDtype))
        and 0 < adata.obs[name].nunique() <= MAX_CLUSTERS
    ]
    return sorted(columns, key=lambda name: _CLUSTER_HINT.search(name) is None)


def captions_for_download(adata: AnnData) -> pd.DataFrame:
    """The captions with their evidence as a flat table (lists joined with ``'; '``), indexed
    by cluster, for a CSV download."""
    table = captions_table(adata).set_index("cluster")
    stored = adata.uns["c2s"]["captions"]["clusters"]
    markers = {str(e["cluster"]): [str(g) for g in e["markers"]] for e in stored.values()}
    table["markers"] = [markers.get(c, []) for c in table.index]
    for column in ("top_genes", "markers", "cells_used"):
        table[column] = table[column].map("; ".join)
    return table


def _dataset_name(session: MutableMapping[str, Any]) -> str:
    dataset: state.LoadedDataset | None = session.get(state.DATASET_KEY)
    return dataset.name if dataset is not None else ""


def chat_history(session: MutableMapping[str, Any]) -> list[dict[str, Any]]:
    """The questions and answers about the session's dataset, oldest first.

    Read from the workspace on a session's first call (after a refresh); a history about
    another dataset is not shown.

    Raises
    ------
    WorkspaceError
        The saved history cannot be read.
    """
    name = _dataset_name(session)
    chat = session.get(CHAT_KEY)
    if chat is None:
        chat = state.session_workspace(session).load_document(CHAT_DOCUMENT, None) or {}
        session[CHAT_KEY] = chat
    return list(chat.get("entries", [])) if chat.get("dataset") == name else []


def _save_chat(session: MutableMapping[str, Any], entries: list[dict[str, Any]]) -> None:
    chat = {"dataset": _dataset_name(session), "entries": entries}
    session[CHAT_KEY] = chat
    workspace = state.session_workspace(session)
    try:
        workspace.save_document(CHAT_DOCUMENT, chat)
    except OSError as exc:
        raise WorkspaceError(
            f"the conversation is in this browser session but could not be saved to "
            f"{workspace.path} ({exc})",
            "free disk space or set C2S_WORKSPACE_DIR to a writable folder; meanwhile export "
            "the transcript") from exc


def add_answer(session: MutableMapping[str, Any], answer: Answer, scope_text: str) -> dict:
    """Append ``answer`` (with the context it used) to the history and save it.

    Returns the stored entry: question, answer, scope (``scope_text``, how the UI named it),
    scope_kind, groupby, cells_used, genes, facts, n_tokens, budget, prompt, model, time.

    Raises
    ------
    WorkspaceError
        The history is kept in the session but could not be saved.
    """
    entry = {
        "question": answer.question, "answer": answer.answer, "scope": scope_text,
        "scope_kind": answer.scope_kind, "groupby": answer.groupby,
        "cells_used": list(answer.cells_used), "genes": list(answer.genes),
        "facts": answer.facts_text, "n_tokens": int(answer.n_tokens),
        "budget": int(answer.budget), "prompt": answer.prompt,
        "model": str(answer.provenance.get("model", "")),
        "time": str(answer.provenance.get("time", "")),
    }
    _save_chat(session, [*chat_history(session), entry])
    return entry


def clear_chat(session: MutableMapping[str, Any]) -> None:
    """Forget the conversation (in the session and in the workspace)."""
    _save_chat(session, [])


def transcript_markdown(entries: list[dict[str, Any]], dataset_name: str) -> str:
    """The conversation as a Markdown document: every question, its answer and the context
    the answer was given (scope, cells, genes, facts)."""
    lines = ["# C2S Studio conversation", "", f"Dataset: {dataset_name}", ""]
    for number, entry in enumerate(entries, start=1):
        cells = entry["cells_used"]
        lines += [
            f"## Question {number}", "", f"**Question:** {entry['question']}", "",
            f"**Answer** ({entry['model']}, {entry['time']}):", "", entry["answer"] or "(empty)",
            "", "**Context used**", "",
            f"- Scope: {entry['scope']}",
            f"- Cells ({len(cells)}): {', '.join(cells)}",
            f"- Genes shared by most of these cells: {', '.join(entry['genes'])}",
            f"- Facts: {entry['facts']}",
            f"- Prompt tokens: {entry['n_tokens']} of {entry['budget']}", "",
        ]
    return "\n".join(lines)
