"""What every model page shares: the checks it starts with (a dataset, a loaded model, a model
trained for the task) and the handling of its background job."""

from __future__ import annotations

from collections.abc import Callable

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


def finished_result(outcome: components.JobOutcome, message_key: str, stale: str, *,
                    failed_prefix: str = "") -> tuple | None:
    """The result of a finished background job, or None after saying why it is not kept.

    ``outcome.result`` starts with the dataset the job ran on. A failed or cancelled job
    leaves its message (after ``failed_prefix``) under ``message_key``; a job whose dataset was
    replaced meanwhile leaves ``stale``. Either way the session's data and earlier results stay.
    """
    if outcome.status != "done":
        kind = "warning" if outcome.status == "cancelled" else "error"
        st.session_state[message_key] = (kind, failed_prefix + outcome.message)
        return None
    if st.session_state.get(state.DATASET_KEY) is not outcome.result[0]:
        st.session_state[message_key] = ("warning", stale)
        return None
    return outcome.result


def page_start(task: str, task_title: str, job_key: str,
               apply: Callable[[components.JobOutcome], None]
               ) -> tuple[state.LoadedDataset, LoadedModel] | None:
    """:func:`page_inputs`, then hand a job that finished since the last run to ``apply``
    (before any widget is drawn, so the page shows its results)."""
    inputs = page_inputs(task, task_title)
    if inputs is None:
        return None
    outcome = components.collect_job(st.session_state, job_key)
    if outcome is not None:
        apply(outcome)
    return inputs


def job_page(task: str, task_title: str, job_key: str, message_key: str,
             apply: Callable[[components.JobOutcome], None],
             settings: Callable[[state.LoadedDataset, LoadedModel, bool], None],
             results: Callable[[state.LoadedDataset], None]) -> None:
    """The body of a page that runs one background job: inputs, the finished job's results,
    the settings form, progress while running, the last message, then the results."""
    inputs = page_start(task, task_title, job_key, apply)
    if inputs is None:
        return
    dataset, loaded = inputs
    settings(dataset, loaded, components.job_running(st.session_state, job_key))
    if components.job_running(st.session_state, job_key):  # again: settings may start one
        components.progress_panel(job_key)
    message = st.session_state.get(message_key)
    if message is not None:
        getattr(st, message[0])(message[1])
    results(dataset)
