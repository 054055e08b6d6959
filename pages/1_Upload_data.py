"""Upload page: load a dataset (or the example), check it, and show the validation report."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from c2s_engine.embedding_view import ensure_umap
from c2s_engine.errors import C2SError
from c2s_engine.qc import compute_qc
from webapp import state
from webapp.plots import embedding_figure

logger = logging.getLogger(__name__)

st.title("Upload data")
st.write(
    "Load a single-cell dataset; C2S Studio checks it, finds gene symbols and the organism, and "
    "prepares the expression values the C2S models expect."
)


def _attempt(load, source: str) -> None:
    """Run a loader and keep its dataset, or its one-line error, in the session."""
    try:
        with st.spinner(f"Reading and checking {source}..."):
            # Kept in the session and saved to its workspace, so a refresh does not lose it.
            state.set_dataset(st.session_state, load())
        st.session_state.pop(state.ERROR_KEY, None)
    except C2SError as err:
        st.session_state[state.ERROR_KEY] = str(err)
    except Exception as err:  # a reader bug must still reach the user as one line, not a traceback
        logger.exception("unexpected error while loading %s", source)
        st.session_state[state.ERROR_KEY] = (
            f"Could not load {source} ({type(err).__name__}: {err}). Fix: check that the file is "
            f"complete and in a supported format ({state.SUPPORTED_FORMATS}); if it is, report "
            "this error together with the server log."
        )


example_col, upload_col = st.columns([1, 2], vertical_alignment="center")
with example_col:
    if st.button(
        "Load example dataset",
        key="c2s_load_example",
        type="primary",
        help="700 human blood cells (PBMCs) bundled with scanpy; nothing is downloaded.",
    ):
        _attempt(state.load_example, "the example dataset")
with upload_col:
    uploaded = st.file_uploader(
        "Or upload your own file", key="c2s_upload", help=f"Supported: {state.SUPPORTED_FORMATS}."
    )

# The uploader keeps its file across reruns; read each upload once.
if uploaded is not None and st.session_state.get(state.LAST_UPLOAD_KEY) != uploaded.file_id:
    st.session_state[state.LAST_UPLOAD_KEY] = uploaded.file_id
    workdir = state.session_workdir(st.session_state)
    _attempt(lambda: state.load_upload(uploaded.name, uploaded, workdir), uploaded.name)

if state.ERROR_KEY in st.session_state:
    st.error(st.session_state[state.ERROR_KEY])

dataset: state.LoadedDataset | None = st.session_state.get(state.DATASET_KEY)
if dataset is not None:
    report = dataset.report
    st.subheader("Validation report")
    st.text(dataset.name)
    cells, genes, organism, identifiers = st.columns(4)
    cells.metric("Cells", f"{report.n_cells:,}")
    genes.metric("Genes", f"{report.n_genes:,}")
    organism.metric("Organism", report.organism)
    identifiers.metric("Gene identifiers", report.identifier_kind)
    st.table(pd.DataFrame.from_dict(state.report_rows(report), orient="index", columns=["Value"]))
    for problem in report.problems:
        show = st.error if problem.severity == "error" else st.warning
        show(f"{problem.message}. Fix: {problem.fix}" if problem.fix else problem.message)
    if report.ok:
        st.success("Ready: the dataset is prepared for cell sentences.")
    with st.expander("Report as text"):
        st.code(report.to_text(), language=None)

    st.subheader("Quality control and map")
    adata = dataset.adata
    try:
        if "c2s_n_genes" not in adata.obs or "X_umap" not in adata.obsm:
            with st.spinner("Computing QC numbers and a UMAP with scanpy (only when missing)..."):
                qc = compute_qc(adata)
                ensure_umap(adata)
            state.save_dataset(st.session_state)
        else:
            qc = compute_qc(adata)
        genes_col, counts_col, mito_col = st.columns(3)
        genes_col.metric("Median genes per cell", f"{qc.median_genes:,.0f}")
        counts_col.metric("Median counts per cell",
                          "n/a (not raw counts)" if qc.median_counts is None else f"{qc.median_counts:,.0f}")
        mito_col.metric("Median % mitochondrial",
                        "n/a" if qc.median_pct_mito is None else f"{qc.median_pct_mito:.1f}%")
        colour_options = ["c2s_n_genes", *report.label_columns]
        colour = st.selectbox("Colour the map by", colour_options, key="c2s_upload_colour",
                              index=min(1, len(colour_options) - 1))
        st.plotly_chart(embedding_figure(adata, colour), key="c2s_upload_umap")
    except C2SError as err:
        st.error(str(err))
