"""The checks every model page starts with: a dataset, a loaded model, a model trained for the task."""

from __future__ import annotations

import streamlit as st

from c2s_engine.models import LoadedModel
from webapp import components, models, state


def page_inputs(task: str, task_title: str) -> tuple[state.LoadedDataset, LoadedModel] | None:
    """The session's dataset and model, or None after telling the user what is missing.

    Shows a link to the Upload page when no dataset is loaded, the model's one-line load
    error when there is no model, and the models that do support ``task`` when the current
    model's card does not list it.
    """
    dataset: state.LoadedDataset | None = st.session_state.get(state.DATASET_KEY)
    if dataset is None:
        st.info("No dataset is loaded. Fix: load your data, or the example dataset, on the "
                "Upload data page first.", icon=":material/info:")
        st.page_link(st.Page(state.UPLOAD_SCRIPT, title="Upload data"),
                     label="Go to Upload data", icon=":material/upload_file:")
        return None
    loaded = models.current_model(st.session_state)
    if loaded is None:
        st.error(models.model_error(st.session_state) or "No model is loaded.")
        st.caption("Choose another model in the sidebar under Change model.")
        return None
    if not loaded.card.supports(task):
        components.task_not_supported(task, task_title, loaded)
        return None
    return dataset, loaded
