"""Dataset summary page: an abstract-style description written from a sample of the cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import streamlit as st

from c2s_engine.errors import C2SError
from c2s_engine.tasks import summarize as summarize_task
from webapp import components, plots, state, text_tasks
from webapp.page_setup import finished_result, job_page

TASK = summarize_task.TASK
JOB_KEY = "c2s_summary_job"
MESSAGE_KEY = "c2s_summary_message"
SEED_KEY = "c2s_sum_seed"
#: Set by the "Regenerate" button's callback, which also moves the seed on.
REGENERATE_KEY = "c2s_sum_regenerate"
NONE = "(none)"
USED, NOT_USED = "in the prompt", "not used"

st.title("Dataset summary")
st.write(
    "Write a short, abstract-style description of the dataset. A sample of cells (taking "
    "turns between clusters when a cluster column is chosen) is turned into cell sentences "
    "and packed into the model's context; the model writes the summary from them. Below it "
    "you see which cells were used and how much of the context they took."
)


def _apply(outcome: components.JobOutcome) -> None:
    """Keep a finished summary, or say why there is none; the earlier summary stays."""
    finished = finished_result(outcome, MESSAGE_KEY, "The summary finished after another "
                               "dataset was loaded, so it was not kept.")
    if finished is None:
        return
    dataset, work, summary = finished
    dataset.adata = work
    text = (f"Summarised from {summary.n_cells_used} cells in "
            f"{components.format_duration(outcome.seconds)}.")
    st.session_state[MESSAGE_KEY] = ("success", text)
    try:
        state.save_dataset(st.session_state)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")


def _next_seed() -> None:
    # A button callback runs before the page, so it may still change the seed widget's value.
    st.session_state[SEED_KEY] = int(st.session_state.get(SEED_KEY, 0)) + 1
    st.session_state[REGENERATE_KEY] = True


def _settings(dataset: state.LoadedDataset, loaded, running: bool) -> None:
    adata = dataset.adata
    groupings = [NONE, *text_tasks.cluster_columns(adata)]
    left, right = st.columns(2)
    with left:
        n_cells = st.number_input("Cells to offer", 1, 200, 20, key="c2s_sum_n_cells",
                                  help="The released models were trained with 5 to 20 cells; "
                                       "fewer are used when they do not all fit the context.")
        groupby = st.selectbox("Take turns between the clusters of", groupings,
                               index=1 if len(groupings) > 1 else 0, key="c2s_sum_groupby",
                               help="So that small clusters are represented too.")
    with right, st.expander("Advanced"):
        top_k = st.number_input("Genes per cell sentence", 1, 2000, int(loaded.card.top_k),
                                key="c2s_sum_top_k")
        max_new_tokens = st.number_input("Longest summary (tokens)", 1,
                                         text_tasks.max_new_tokens_limit(loaded),
                                         text_tasks.default_new_tokens(TASK, loaded),
                                         key="c2s_sum_max_tokens")
        seed = st.number_input("Seed (which cells are drawn)", 0, 2**31 - 1, 0, key=SEED_KEY)
        do_sample = st.checkbox("Sample the wording (varies with the seed)", False,
                                key="c2s_sum_sample")
    has_summary = summarize_task.SUMMARY_KEY in adata.uns.get("c2s", {})
    write, again = st.columns([1, 3])
    clicked = write.button("Write summary", type="primary", disabled=running,
                           key="c2s_sum_run", icon=":material/play_arrow:")
    again.button("Regenerate with a new seed", disabled=running or not has_summary,
                 key="c2s_sum_again", icon=":material/refresh:", on_click=_next_seed,
                 help="Draws other cells (seed + 1) and writes the summary again.")
    if not (clicked or st.session_state.pop(REGENERATE_KEY, False)):
        return
    work = state.working_copy(adata)
    options = {"n_cells": int(n_cells), "groupby": None if groupby == NONE else groupby,
               "top_k": int(top_k), "max_new_tokens": int(max_new_tokens), "seed": int(seed),
               "do_sample": bool(do_sample)}

    def run(progress, cancel):
        summary = summarize_task.summarize_dataset(work, loaded, progress=progress,
                                                   cancel=cancel, **options)
        return dataset, work, summary

    st.session_state.pop(MESSAGE_KEY, None)
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing="writing the summary",
                                                  unit="summaries"))


def _cells_map(adata: ad.AnnData, cells: list[str]) -> None:
    if "X_umap" not in adata.obsm:
        return
    used = np.where(adata.obs_names.isin(cells), USED, NOT_USED)
    # The unused cells first, so the few used ones are drawn on top of them.
    view = ad.AnnData(obs=pd.DataFrame({"cells": pd.Categorical(used, [NOT_USED, USED])},
                                       index=adata.obs_names),
                      obsm={"X_umap": np.asarray(adata.obsm["X_umap"])})
    figure = plots.embedding_figure(view, "cells", title="Cells in the prompt")
    figure.update_traces(selector={"name": NOT_USED}, marker={"color": "#CBD5E1"})
    figure.update_traces(selector={"name": USED}, marker={"color": "#DC2626", "size": 10})
    st.plotly_chart(figure, key="c2s_sum_umap")


def _results(dataset: state.LoadedDataset) -> None:
    adata = dataset.adata
    stored = adata.uns.get("c2s", {}).get(summarize_task.SUMMARY_KEY)
    if not stored:
        return
    prov = stored["provenance"]
    st.divider()
    st.subheader("Summary")
    st.caption(f"Written by {prov['model']} ({prov['precision']}, {prov['device']}) on "
               f"{prov['time']}, seed {prov['seed']}.")
    if not prov.get("card_lists_task", True):
        st.warning("This model's card does not list dataset summaries: read it with caution.")
    with st.container(border=True):
        st.text(str(stored["text"]) or "(the model wrote nothing)")
    n_tokens, budget = int(stored["n_tokens"]), int(stored["budget"])
    context = int(stored["context_length"])
    cells_col, genes_col, tokens_col = st.columns(3)
    cells_col.metric("Cells used", f"{int(stored['n_cells_used']):,}")
    genes_col.metric("Genes per cell", f"{int(stored['n_genes_per_cell']):,}")
    tokens_col.metric("Prompt tokens", f"{n_tokens:,} of {budget:,}")
    st.progress(min(1.0, n_tokens / budget) if budget else 0.0,
                text=f"Context budget: {n_tokens:,} of {budget:,} prompt tokens used "
                     f"({n_tokens / budget:.0%}); the model's context is {context:,} tokens, "
                     f"{context - budget:,} of them kept for the summary.")
    cells = [str(c) for c in stored["cells_used"]]
    groupby = str(stored["groupby"])
    st.subheader("Cells used")
    _cells_map(adata, cells)
    table = pd.DataFrame(index=pd.Index(cells, name="cell"))
    if groupby and groupby in adata.obs:
        table[groupby] = adata.obs.loc[cells, groupby].astype(str).to_numpy()
    table["position in prompt"] = np.arange(1, len(cells) + 1)
    st.dataframe(table, key="c2s_sum_cells")
    with st.expander("The exact prompt"):
        st.code(str(stored["prompt"]), language=None, wrap_lines=True)


def main() -> None:
    job_page(TASK, "dataset summaries", JOB_KEY, MESSAGE_KEY, _apply, _settings, _results)


main()
