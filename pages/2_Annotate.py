"""Annotate page: a cell type for every cell, its agreement with existing labels, and plots."""

from __future__ import annotations

import re
from dataclasses import replace

import pandas as pd
import streamlit as st

from c2s_engine.embedding_view import ensure_umap
from c2s_engine.errors import C2SError
from c2s_engine.inference.batching import DEFAULT_BATCH_SIZE
from c2s_engine.tasks import annotate as annotate_task
from webapp import components, plots, state
from webapp.page_setup import finished_result, job_page

TASK = annotate_task.TASK
JOB_KEY = "c2s_annotate_job"
MESSAGE_KEY = "c2s_annotate_message"
NONE = "(none)"
FROM_COLUMN, TYPED, FREE_TEXT = "From an obs column", "Typed list", "None: the model names them"
GENE = "A gene..."
_LABEL_HINT = re.compile(r"cell.?type|label|annot", re.IGNORECASE)
_CLUSTER_HINT = re.compile(r"leiden|louvain|cluster", re.IGNORECASE)

st.title("Annotate cell types")
st.write(
    "Predict the cell type of every cell from its top expressed genes with the C2S model. "
    "With candidate cell types, the model scores each one and reports its confidence; without, "
    "it names the type in free text. Existing labels give accuracy and a confusion matrix."
)


def _preferred(options: list[str], pattern: re.Pattern[str]) -> int:
    return next((i for i, name in enumerate(options) if pattern.search(name)), 0)


def _typed_labels(text: str) -> list[str]:
    return [label.strip() for label in re.split(r"[\n,]", text) if label.strip()]


def _apply(outcome: components.JobOutcome) -> None:
    """Keep a finished run's results, or say why there are none; earlier results stay intact."""
    finished = finished_result(outcome, MESSAGE_KEY, "The annotation finished after another "
                               "dataset was loaded, so it was not kept.")
    if finished is None:
        return
    dataset, annotated, result, save_error = finished
    dataset.adata = annotated
    cached = sum(int(c.get("n_cached", 0)) for c in result.provenance.get("calls", {}).values())
    text = (f"Annotated {annotated.n_obs:,} cells in {components.format_duration(outcome.seconds)}"
            + (f" ({cached:,} model answers came from the cache)." if cached else "."))
    st.session_state[MESSAGE_KEY] = ("warning", f"{text} {save_error}") if save_error else \
        ("success", text)


def _settings(dataset: state.LoadedDataset, loaded, running: bool) -> None:
    adata = dataset.adata
    label_columns = [c for c in dataset.report.label_columns if c in adata.obs]
    categorical = [c for c in adata.obs.columns
                   if not pd.api.types.is_numeric_dtype(adata.obs[c])
                   or isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
    sources = [FROM_COLUMN, TYPED, FREE_TEXT] if label_columns else [TYPED, FREE_TEXT]
    source = st.radio("Candidate cell types", sources, horizontal=True, key="c2s_ann_source",
                      help="Scoring a list of candidates is faster and gives a confidence.")
    labels = labels_from = None
    left, right = st.columns(2)
    with left:
        if source == FROM_COLUMN:
            labels_from = st.selectbox("Candidates: the values of", label_columns,
                                       index=_preferred(label_columns, _LABEL_HINT),
                                       key="c2s_ann_labels_from")
        elif source == TYPED:
            labels = _typed_labels(st.text_area(
                "Candidate cell types (one per line or comma-separated)",
                key="c2s_ann_labels", placeholder="CD4 T cell\nB cell\nCD14 monocyte"))
        truth_options = [NONE, *label_columns]
        truth = st.selectbox(
            "Compare with existing labels in", truth_options,
            index=truth_options.index(labels_from) if labels_from else 0, key="c2s_ann_truth",
            help="Gives accuracy, macro-F1 and a confusion matrix.")
    with right:
        group_options = [NONE, *categorical]
        groupby = st.selectbox(
            "Clusters for a majority vote", group_options, key="c2s_ann_groupby",
            index=1 + _preferred(categorical, _CLUSTER_HINT) if categorical else 0,
            help="Each cluster gets the label most of its cells received.")
        with st.expander("Advanced"):
            top_k = st.number_input("Genes per cell sentence", 1, 2000,
                                    int(loaded.card.top_k), key="c2s_ann_top_k")
            batch_size = st.number_input("Batch size", 1, 256, DEFAULT_BATCH_SIZE, key="c2s_ann_batch")
            tie_orders = st.number_input(
                "Tie orders to average", 1, 16, 1, key="c2s_ann_tie_orders",
                disabled=source == FREE_TEXT,
                help="Genes with equal counts in a cell are ranked in an arbitrary order. Score "
                     "each cell in this many orders and average: steadier labels, that many "
                     "times the time. Needs candidate labels.")
    if not st.button("Annotate cells", type="primary", disabled=running, key="c2s_ann_run",
                     icon=":material/play_arrow:"):
        return
    if source == TYPED and not labels:
        st.session_state[MESSAGE_KEY] = ("error", "No candidate cell types were typed. Fix: type "
                                         "at least one, or choose another source of candidates.")
        return
    try:
        with st.spinner("Preparing the cell map..."):
            ensure_umap(adata)  # before the copy, so the results keep the map
    except C2SError as err:
        st.session_state[MESSAGE_KEY] = ("error", str(err))
        return
    work = state.working_copy(adata)
    options = {"labels": labels, "labels_from": labels_from,
               "truth": None if truth == NONE else truth,
               "groupby": None if groupby == NONE else groupby,
               "top_k": int(top_k), "batch_size": int(batch_size),
               "tie_orders": 1 if source == FREE_TEXT else int(tie_orders)}

    workspace = state.session_workspace(st.session_state)

    def run(progress, cancel):
        result = annotate_task.annotate(work, loaded, progress=progress, cancel=cancel, **options)
        # Saved here, not when the page collects the job, so that a tab refreshed or closed
        # during the run still finds the finished work in its workspace.
        saved = ""
        try:
            state.save_to(workspace, replace(dataset, adata=work))
        except C2SError as err:
            saved = str(err)
        return dataset, work, result, saved

    st.session_state.pop(MESSAGE_KEY, None)
    components.start_job(st.session_state, JOB_KEY,
                         components.BackgroundJob(run, doing="annotating the cells"))


def _metrics(prov: dict) -> None:
    metrics = prov.get("metrics")
    if not metrics:
        return
    st.subheader("Agreement with the existing labels")
    accuracy, f1, cells = st.columns(3)
    accuracy.metric("Accuracy", f"{float(metrics['accuracy']):.1%}")
    f1.metric("Macro-F1", f"{float(metrics['macro_f1']):.3f}")
    cells.metric("Cells compared", f"{int(metrics['n_cells']):,}")
    st.caption(f"Labels compared {metrics['label_normalization']}; truth: "
               f"obs['{prov.get('params', {}).get('truth', '?')}'].")
    st.plotly_chart(plots.confusion_figure(metrics["confusion"], list(metrics["labels"]),
                                           int(metrics["n_true_labels"])),
                    key="c2s_ann_confusion")


def _clusters(prov: dict) -> pd.DataFrame | None:
    clusters = prov.get("clusters")
    if not clusters:
        return None
    columns = [c for c in ("cell_type", "agreement", "n_cells", "mean_confidence")
               if c in clusters]
    table = pd.DataFrame({c: list(clusters[c]) for c in columns},
                         index=pd.Index([str(c) for c in clusters["cluster"]],
                                        name=str(clusters["groupby"])))
    return table.rename(columns={"cell_type": "majority cell type"})


def _umap(adata, keys: dict) -> None:
    st.subheader("Cell map")
    try:
        with st.spinner("Computing a UMAP of the cells..."):
            basis = ensure_umap(adata)
    except C2SError as err:
        st.error(str(err))
        return
    first = [keys[k] for k in ("prediction", "confidence", "cluster") if k in keys]
    options = [*first, *(c for c in adata.obs.columns if c not in first), GENE]
    left, right = st.columns([2, 1])
    color = left.selectbox("Colour cells by", options, key="c2s_ann_color")
    if color == GENE:
        color = right.selectbox("Gene", list(adata.var_names), key="c2s_ann_gene")
    try:
        figure = plots.embedding_figure(adata, color, basis=basis)
    except C2SError as err:
        st.error(str(err))
        return
    event = st.plotly_chart(figure, on_select="rerun", selection_mode=("lasso", "box"),
                            key="c2s_ann_umap")
    picked = plots.selected_cells(event)
    if picked:
        st.session_state[state.SELECTION_KEY] = picked
    st.caption("Draw a lasso or a box on the map to select cells; the selection is also used "
               "by the other pages.")


def _selection(adata, keys: dict) -> None:
    picked = [n for n in st.session_state.get(state.SELECTION_KEY) or [] if n in adata.obs_names]
    if not picked:
        return
    st.subheader(f"Selected cells ({len(picked):,})")
    subset = adata.obs.loc[picked]
    summary = subset[keys["prediction"]].astype(str).value_counts().rename("cells").to_frame()
    if "confidence" in keys:
        summary["mean confidence"] = subset.groupby(
            subset[keys["prediction"]].astype(str))[keys["confidence"]].mean()
    st.dataframe(summary, key="c2s_ann_selection_table")
    left, right = st.columns(2)
    with left:
        components.download_csv(subset[[k for k in keys.values() if k in subset]],
                                "selected_cells.csv", key="c2s_ann_dl_selection",
                                label="Download the selection (CSV)")
    with right:
        if st.button("Clear selection", key="c2s_ann_clear_selection"):
            st.session_state.pop(state.SELECTION_KEY, None)
            st.rerun()


def _results(dataset: state.LoadedDataset) -> None:
    adata = dataset.adata
    prov = adata.uns.get("c2s", {}).get("annotate")
    if not prov or prov["keys"]["prediction"] not in adata.obs:
        return
    keys = {k: str(v) for k, v in prov["keys"].items() if k in ("prediction", "confidence",
                                                                   "cluster", "generated")}
    st.divider()
    st.caption(f"Last run: {prov['model']} ({prov['precision']}, {prov['device']}), mode "
               f"{prov.get('params', {}).get('mode', '?')}, {prov['time']}.")
    if not prov.get("card_lists_task", True):
        st.warning("This model's card does not list cell type prediction: treat the labels "
                   "with caution.")
    _metrics(prov)
    _umap(adata, keys)
    _selection(adata, keys)
    clusters = _clusters(prov)
    if clusters is not None:
        st.subheader("Cluster majority")
        st.dataframe(clusters, key="c2s_ann_clusters", column_config={
            "agreement": st.column_config.ProgressColumn("agreement", format="percent",
                                                         min_value=0.0, max_value=1.0)})
    st.subheader("Downloads")
    stem = re.sub(r"\.h5ad$", "", state.safe_filename(dataset.name)) or "dataset"
    truth = prov.get("params", {}).get("truth")
    columns = [*keys.values(), *([truth] if truth in adata.obs else [])]
    left, right = st.columns(2)
    with left:
        components.download_h5ad(adata, f"{stem}_annotated.h5ad", key="c2s_ann_dl_h5ad",
                                 label="Annotated data (.h5ad, with provenance)")
    with right:
        components.download_csv(adata.obs[list(dict.fromkeys(columns))],
                                f"{stem}_cell_types.csv", key="c2s_ann_dl_csv",
                                label="Predictions per cell (CSV)")


def main() -> None:
    job_page(TASK, "cell type annotation", JOB_KEY, MESSAGE_KEY, _apply, _settings, _results)


main()
