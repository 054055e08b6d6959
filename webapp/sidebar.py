"""The sidebar of every page: the current dataset and model, and the switches for both.

Drawn by ``webapp/app.py`` after the page, so that a dataset or model chosen during this run
is already shown.
"""

from __future__ import annotations

import streamlit as st

from c2s_engine.models.memory import PRECISIONS
from webapp import models, state

LOCAL_FOLDER = "Local folder..."


def dataset_section(upload_page: st.Page) -> None:
    """Card of the session's dataset, a link to load another, and the workspace controls."""
    with st.container(border=True):
        dataset = st.session_state.get(state.DATASET_KEY)
        if dataset is None:
            st.caption("No dataset loaded yet. Start on the Upload data page.")
        else:
            card = state.dataset_card(dataset)
            st.caption("Current dataset")
            st.text(card.pop("Dataset"))  # text, not markdown: file names may contain * or _
            st.markdown("  \n".join(f"{label}: {value}" for label, value in card.items()))
            selection = st.session_state.get(state.SELECTION_KEY) or []
            if selection:
                st.caption(f"{len(selection):,} cells selected on a plot")
        st.page_link(upload_page, label="Load another dataset", icon=":material/upload_file:")
        workspace = state.session_workspace(st.session_state)
        st.caption(f"Work is saved in workspace {workspace.id[:8]}; bookmark this page's address "
                   "to come back to it.")
        with st.popover("Clear saved work", icon=":material/delete:"):
            st.write("Deletes the dataset and all results of this session from the server.")
            if st.button("Delete saved work", key="c2s_clear_workspace", type="primary"):
                state.clear_workspace(st.session_state, st.query_params)
                st.rerun()


def model_section() -> None:
    """Card of the session's model (or its load error) and the picker to switch models."""
    with st.container(border=True):
        st.caption("Current model")
        loaded = models.current_model(st.session_state)
        if loaded is None:
            st.error(models.model_error(st.session_state) or "No model loaded.")
        else:
            card = models.model_card(loaded)
            st.text(card.pop("Model"))
            st.markdown("  \n".join(f"{label}: {value}" for label, value in card.items()))
            for notice in loaded.notices:
                st.caption(notice)
        with st.expander("Change model"):
            _model_picker()


def _model_picker() -> None:
    current = models.current_choice(st.session_state)
    options = [*models.model_options(), LOCAL_FOLDER]
    known = current.name in options
    with st.form("c2s_model_form", border=False):
        name = st.selectbox("Model", options, index=options.index(current.name) if known else
                            len(options) - 1, key="c2s_model_name",
                            help="demo is the small model shipped with C2S Studio; released "
                                 "models are downloaded from Hugging Face the first time.")
        folder = st.text_input("Local model folder", value="" if known else current.name,
                               key="c2s_model_folder",
                               help="Used with 'Local folder...': a folder written by "
                                    "save_pretrained (safetensors weights, tokenizer, c2s.json).")
        precision = st.selectbox("Precision", PRECISIONS, index=PRECISIONS.index(current.precision),
                                 key="c2s_model_precision",
                                 help="auto: 4-bit on a GPU, fp32 on the CPU.")
        device = st.selectbox("Device", models.DEVICES, index=models.DEVICES.index(current.device),
                              key="c2s_model_device")
        submitted = st.form_submit_button("Load model")
    if submitted:
        chosen = folder.strip() if name == LOCAL_FOLDER else name
        if not chosen:
            st.error("No folder given. Fix: type the path of a saved model folder.")
            return
        with st.spinner(f"Loading {chosen}..."):
            models.choose(st.session_state, models.ModelChoice(chosen, precision, device))
        st.rerun()  # redraw the card above with the new model or its error


def render_sidebar(upload_page: st.Page) -> None:
    """Draw the dataset and model sections in the sidebar."""
    with st.sidebar:
        dataset_section(upload_page)
        model_section()
