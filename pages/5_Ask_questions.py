"""Ask questions page: a chat about the dataset, every answer with the context it was given."""

from __future__ import annotations

import re

import streamlit as st

from c2s_engine.errors import C2SError
from c2s_engine.tasks import ask as ask_task
from webapp import components, state, text_tasks
from webapp.page_setup import finished_result, page_start

TASK = ask_task.TASK
JOB_KEY = "c2s_ask_job"
MESSAGE_KEY = "c2s_ask_message"
#: The question being answered, shown in the chat until its answer arrives.
PENDING_KEY = "c2s_ask_pending"
DATASET, CLUSTER, SELECTION = "Whole dataset", "One cluster", "Selected cells"
NONE = "(none)"

st.title("Ask questions")
st.write(
    "Ask the model about your data in plain words. Each question is answered from facts "
    "computed with scanpy (size, organism, most expressed genes, clusters and their marker "
    "genes) and from the cell sentences of cells in the scope you choose: the whole dataset, "
    "one cluster, or the cells you selected on a plot. Open 'Context used' under an answer to "
    "see exactly what the model was given."
)


def _apply(outcome: components.JobOutcome) -> None:
    """Add a finished answer to the conversation, or say why there is none."""
    question = st.session_state.pop(PENDING_KEY, "")
    asked = f"Not answered: \u201c{question}\u201d. " if question.strip() else ""
    finished = finished_result(outcome, MESSAGE_KEY, "The answer arrived after another dataset "
                               "was loaded, so it was not kept.", failed_prefix=asked)
    if finished is None:
        return
    dataset, work, answer, scope_text = finished
    dataset.adata = work
    try:
        text_tasks.add_answer(st.session_state, answer, scope_text)
        state.save_dataset(st.session_state)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", str(err))


def _selection(adata) -> list[str]:
    picked = st.session_state.get(state.SELECTION_KEY) or []
    return [name for name in picked if name in adata.obs_names]


def _scope(dataset: state.LoadedDataset, loaded) -> dict | None:
    """The scope and options of the next question (None when the choice is incomplete)."""
    adata = dataset.adata
    columns = text_tasks.cluster_columns(adata)
    selected = _selection(adata)
    scopes = [DATASET, *([CLUSTER] if columns else []), *([SELECTION] if selected else [])]
    left, middle, right = st.columns([2, 2, 1])
    with left:
        kind = st.radio("Scope", scopes, horizontal=True, key="c2s_ask_scope",
                        format_func=lambda s: f"{s} ({len(selected):,})" if s == SELECTION
                        else s)
        if not selected:
            st.caption("To ask about chosen cells, draw a lasso or box on the map of the "
                       "Annotate page.")
    with middle:
        groupings = columns if kind == CLUSTER else [NONE, *columns]
        groupby = st.selectbox("Clusters from", groupings, key="c2s_ask_groupby",
                               index=1 if kind != CLUSTER and columns else 0,
                               help="Their sizes and marker genes go into the facts.")
        groupby = None if groupby == NONE else groupby
        cluster = None
        if kind == CLUSTER:
            names = sorted(adata.obs[groupby].dropna().astype(str).unique())
            cluster = st.selectbox("Cluster", names, key="c2s_ask_cluster")
    with right, st.popover("Advanced", icon=":material/tune:"):
        n_cells = st.number_input("Cells to offer", 1, 200, 20, key="c2s_ask_n_cells")
        top_k = st.number_input("Genes per cell sentence", 1, 2000, int(loaded.card.top_k),
                                key="c2s_ask_top_k")
        max_new_tokens = st.number_input("Longest answer (tokens)", 1,
                                         text_tasks.max_new_tokens_limit(loaded),
                                         text_tasks.default_new_tokens(TASK, loaded),
                                         key="c2s_ask_max_tokens")
        seed = st.number_input("Seed (which cells are drawn)", 0, 2**31 - 1, 0,
                               key="c2s_ask_seed")
    if kind == CLUSTER:
        scope, text = cluster, f"cluster {cluster} of {groupby}"
    elif kind == SELECTION:
        scope, text = selected, f"{len(selected):,} selected cells"
    else:
        scope, text = ask_task.DATASET_SCOPE, "whole dataset"
    return {"scope": scope, "scope_text": text, "groupby": groupby, "n_cells": int(n_cells),
            "top_k": int(top_k), "max_new_tokens": int(max_new_tokens), "seed": int(seed)}


def _context(entry: dict) -> None:
    cells = entry["cells_used"]
    with st.expander(f"Context used: {entry['scope']}, {len(cells)} "
                     f"cell{'s' if len(cells) != 1 else ''}, "
                     f"{entry['n_tokens']:,} of {entry['budget']:,} prompt tokens"):
        st.markdown("**Facts**")
        st.text(entry["facts"])
        st.markdown("**Genes shared by most of these cells**")
        st.text(", ".join(entry["genes"]) or "none")
        st.markdown(f"**Cells ({len(cells)})**")
        st.text(", ".join(cells))
        st.markdown("**Exact prompt**")
        st.code(entry["prompt"], language=None, wrap_lines=True)
        st.caption(f"Answered by {entry['model']} on {entry['time']}.")


def _conversation(entries: list[dict]) -> None:
    for entry in entries:
        with st.chat_message("user"):
            st.text(entry["question"])
            st.caption(f"About: {entry['scope']}")
        with st.chat_message("assistant"):
            st.text(entry["answer"] or "(the model wrote nothing)")
            _context(entry)


def _ask(dataset: state.LoadedDataset, loaded, question: str, options: dict) -> None:
    work = state.working_copy(dataset.adata)
    scope_text = options.pop("scope_text")

    def run(progress, cancel):
        answer = ask_task.answer_question(work, question, loaded, progress=progress,
                                          cancel=cancel, **options)
        return dataset, work, answer, scope_text

    st.session_state.pop(MESSAGE_KEY, None)
    st.session_state[PENDING_KEY] = question
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing="answering the question",
                                                  unit="answers"))


def _downloads(dataset: state.LoadedDataset, entries: list[dict]) -> None:
    if not entries:
        return
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    left, right = st.columns(2)
    with left:
        st.download_button("Export the conversation (Markdown)",
                           data=text_tasks.transcript_markdown(entries, dataset.name),
                           file_name=f"{stem}_questions.md", mime="text/markdown",
                           key="c2s_ask_dl_md", icon=":material/download:")
    with right:
        if st.button("Clear the conversation", key="c2s_ask_clear", icon=":material/delete:"):
            try:
                text_tasks.clear_chat(st.session_state)
            except C2SError as err:
                st.session_state[MESSAGE_KEY] = ("warning", str(err))
            st.rerun()


def main() -> None:
    inputs = page_start(TASK, "question answering", JOB_KEY, _apply)
    if inputs is None:
        return
    dataset, loaded = inputs
    running = components.job_running(st.session_state, JOB_KEY)
    options = _scope(dataset, loaded)
    try:
        entries = text_tasks.chat_history(st.session_state)
    except C2SError as err:
        st.warning(str(err))
        entries = []
    _conversation(entries)
    if running:
        with st.chat_message("user"):
            st.text(st.session_state.get(PENDING_KEY, ""))
        with st.chat_message("assistant"):
            components.progress_panel(JOB_KEY)
    message = st.session_state.get(MESSAGE_KEY)
    if message is not None:
        getattr(st, message[0])(message[1])
    if not entries and not running:
        st.caption("Try: 'Which cell types are in this sample?' or 'What distinguishes this "
                   "cluster from the others?'")
    _downloads(dataset, entries)
    question = st.chat_input("Ask a question about this dataset", key="c2s_ask_input",
                             disabled=running)
    if question is not None:  # an empty question gets the engine's message
        _ask(dataset, loaded, question, options)
        st.rerun()


main()
