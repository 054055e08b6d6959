"""Caption clusters page: a short description per cluster, its evidence, and user edits."""

from __future__ import annotations

import re

import streamlit as st

from c2s_engine.clustering import compute_leiden
from c2s_engine.errors import C2SError, ObsColumnError
from c2s_engine.tasks import caption as caption_task
from c2s_engine.tasks.facts import cluster_sizes
from webapp import components, plots, state, text_tasks
from webapp.page_setup import finished_result, job_page

TASK = caption_task.TASK
JOB_KEY = "c2s_caption_job"
MESSAGE_KEY = "c2s_caption_message"
#: Bumped whenever new captions are applied, so the edit boxes start from the stored text.
VERSION_KEY = "c2s_caption_version"
EXISTING, LEIDEN = "An existing obs column", "Compute Leiden clusters"
LEIDEN_KEY = "leiden"

st.title("Caption clusters")
st.write(
    "Describe every cluster in a sentence or two. The model reads the cell sentences of a few "
    "cells sampled from each cluster and writes a caption; next to it you see the evidence "
    "(the genes those cells share, the cluster's marker genes, the cells used). Edit any "
    "caption you disagree with: edits are saved with the data and marked as yours."
)


def _apply(outcome: components.JobOutcome) -> None:
    """Keep a finished run's captions, or say why there are none; earlier results stay."""
    finished = finished_result(outcome, MESSAGE_KEY, "The captions finished after another "
                               "dataset was loaded, so they were not kept.")
    if finished is None:
        return
    dataset, work, result = finished
    dataset.adata = work
    st.session_state[VERSION_KEY] = st.session_state.get(VERSION_KEY, 0) + 1
    text = (f"Captioned {len(result.clusters)} clusters of '{result.groupby}' in "
            f"{components.format_duration(outcome.seconds)}.")
    st.session_state[MESSAGE_KEY] = ("success", text)
    try:
        state.save_dataset(st.session_state)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")


def _settings(dataset: state.LoadedDataset, loaded, running: bool) -> None:
    adata = dataset.adata
    columns = text_tasks.cluster_columns(adata)
    sources = [EXISTING, LEIDEN] if columns else [LEIDEN]
    left, right = st.columns(2)
    with left:
        source = st.radio("Clusters", sources, horizontal=True, key="c2s_cap_source",
                          help="Leiden clusters the cells on their neighbour graph (scanpy).")
        groupby = resolution = None
        if source == EXISTING:
            groupby = st.selectbox("Cluster column", columns, key="c2s_cap_groupby")
        else:
            resolution = st.number_input(
                "Leiden resolution", 0.05, 5.0, 1.0, 0.1, key="c2s_cap_resolution",
                help="Higher gives more, smaller clusters. The clusters are stored in "
                     f"obs['{LEIDEN_KEY}'].")
    with right, st.expander("Advanced"):
        n_cells = st.number_input("Cells sampled per cluster", 1, 100, 10, key="c2s_cap_n_cells",
                                  help="Fewer are used when they do not all fit the context.")
        top_k = st.number_input("Genes per cell sentence", 1, 2000, int(loaded.card.top_k),
                                key="c2s_cap_top_k")
        max_new_tokens = st.number_input("Longest caption (tokens)", 1,
                                         text_tasks.max_new_tokens_limit(loaded),
                                         text_tasks.default_new_tokens(TASK, loaded),
                                         key="c2s_cap_max_tokens")
        seed = st.number_input("Seed (which cells are sampled)", 0, 2**31 - 1, 0,
                               key="c2s_cap_seed")
    if not st.button("Caption clusters", type="primary", disabled=running, key="c2s_cap_run",
                     icon=":material/play_arrow:"):
        return
    work = state.working_copy(adata)
    options = {"n_cells": int(n_cells), "top_k": int(top_k),
               "max_new_tokens": int(max_new_tokens), "seed": int(seed)}

    def run(progress, cancel):
        column = groupby
        if column is None:
            compute_leiden(work, float(resolution), key_added=LEIDEN_KEY, seed=int(seed))
            column = LEIDEN_KEY
        result = caption_task.caption_clusters(work, loaded, groupby=column, progress=progress,
                                               cancel=cancel, **options)
        return dataset, work, result

    st.session_state.pop(MESSAGE_KEY, None)
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing="captioning the clusters",
                                                  unit="clusters"))


def _save_edits(dataset: state.LoadedDataset, edits: dict[str, str]) -> None:
    """Apply the changed captions to a copy, and keep it only when all of them are valid."""
    work = state.working_copy(dataset.adata)
    try:
        for cluster, text in edits.items():
            caption_task.set_caption(work, cluster, text)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("error", f"{err} No caption was changed.")
        return
    dataset.adata = work
    st.session_state[VERSION_KEY] = st.session_state.get(VERSION_KEY, 0) + 1
    text = f"Saved {len(edits)} edited caption{'s' if len(edits) != 1 else ''}."
    st.session_state[MESSAGE_KEY] = ("success", text)
    try:
        state.save_dataset(st.session_state)
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("warning", f"{text} {err}")


def _edit_form(dataset: state.LoadedDataset, stored: dict) -> None:
    """One block per cluster: editable caption, evidence, and the cells used."""
    table = caption_task.captions_table(dataset.adata)
    entries = stored["clusters"]
    version = st.session_state.get(VERSION_KEY, 0)
    texts: dict[str, str] = {}
    with st.form("c2s_cap_form", border=False):
        for position, row in table.iterrows():
            entry = entries[str(position)]
            mark = " · edited by you" if row["edited"] else ""
            st.markdown(f"**Cluster {row['cluster']}** · {row['n_cells']:,} cells{mark}")
            texts[row["cluster"]] = st.text_area(
                f"Caption of cluster {row['cluster']}", row["caption"], height=80,
                key=f"c2s_cap_text_{version}_{position}", label_visibility="collapsed")
            markers = ", ".join(str(g) for g in entry["markers"]) or "none (too few cells)"
            st.caption(f"Genes shared by the cells used: {', '.join(row['top_genes'])}  \n"
                       f"Marker genes (vs the other clusters): {markers}")
            with st.expander(f"The {len(row['cells_used'])} cells in the prompt "
                             f"({int(entry['n_tokens']):,} of {int(entry['budget']):,} "
                             "prompt tokens)"):
                st.text(", ".join(row["cells_used"]))
        submitted = st.form_submit_button("Save edited captions", icon=":material/save:")
    if submitted:
        edits = {cluster: text for cluster, text in texts.items()
                 if text != table.loc[table["cluster"] == cluster, "caption"].iloc[0]}
        if not edits:
            st.session_state[MESSAGE_KEY] = ("info", "No caption was changed.")
        else:
            _save_edits(dataset, edits)
        st.rerun()


def _map(adata, groupby: str) -> None:
    if "X_umap" not in adata.obsm:
        return
    try:
        figure = plots.embedding_figure(adata, groupby, title=f"Clusters of '{groupby}'")
    except C2SError as err:
        st.error(str(err))
        return
    st.plotly_chart(figure, key="c2s_cap_umap")


def _results(dataset: state.LoadedDataset) -> None:
    adata = dataset.adata
    c2s = adata.uns.get("c2s", {})
    stored, prov = c2s.get(caption_task.CAPTIONS_KEY), c2s.get(caption_task.PROVENANCE_KEY)
    if not stored or not prov:
        return
    groupby = str(stored["groupby"])
    st.divider()
    st.subheader(f"Captions of the clusters of '{groupby}'")
    st.caption(f"Written by {prov['model']} ({prov['precision']}, {prov['device']}) on "
               f"{prov['time']}, seed {prov['seed']}.")
    if not prov.get("card_lists_task", True):
        st.warning("This model's card does not list cluster captioning: read the captions "
                   "with caution.")
    if groupby in adata.obs:
        try:
            sizes = cluster_sizes(adata, groupby)
        except ObsColumnError:
            sizes = None
        if sizes is not None and len(sizes) != len(stored["clusters"]):
            st.warning(f"obs['{groupby}'] has changed since the captions were written; caption "
                       "the clusters again.")
        _map(adata, groupby)
    _edit_form(dataset, stored)
    st.subheader("Downloads")
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    left, right = st.columns(2)
    with left:
        components.download_h5ad(adata, f"{stem}_captioned.h5ad", key="c2s_cap_dl_h5ad",
                                 label="Data with captions (.h5ad)")
    with right:
        components.download_csv(text_tasks.captions_for_download(adata),
                                f"{stem}_cluster_captions.csv", key="c2s_cap_dl_csv",
                                label="Captions and evidence (CSV)")


def main() -> None:
    job_page(TASK, "cluster captioning", JOB_KEY, MESSAGE_KEY, _apply, _settings, _results)


main()
