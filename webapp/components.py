"""UI pieces every page shares: long runs with progress and cancel, errors, downloads, and the
panel shown when the current model was not trained for a page's task.

Long engine calls run in a :class:`BackgroundJob` (a thread) because Streamlit reruns the page
script on every click: the thread keeps working across reruns, a polling fragment
(:func:`progress_panel`) draws its progress, and the Cancel button sets the
:class:`threading.Event` the engine checks between batches. The page collects the finished job
with :func:`collect_job` and only then writes its results into the session, so a failed or
cancelled run leaves earlier results as they were.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd
import streamlit as st

from c2s_engine.errors import C2SError, CancelledError
from c2s_engine.models import LoadedModel
from c2s_engine.tasks.runtime import models_supporting
from webapp import models

logger = logging.getLogger(__name__)

#: Seconds between two redraws of a running job's progress.
POLL_SECONDS = 0.5
ProgressFn = Callable[[int, int, float], None]


def error_message(err: BaseException, doing: str) -> str:
    """One line for the user: a C2SError as is, anything else named with a generic fix.

    Unexpected errors are logged with their traceback for the server log.
    """
    if isinstance(err, C2SError):
        return str(err)
    logger.error("unexpected error while %s", doing, exc_info=err)
    text = (f"Could not finish {doing} ({type(err).__name__}: {err}). Fix: check the inputs and "
            "try again; if it happens again, report this error together with the server log.")
    return " ".join(text.split())


def show_error(err: BaseException, doing: str) -> None:
    """Show ``err`` as one ``st.error`` line (see :func:`error_message`), never a traceback."""
    st.error(error_message(err, doing))


@dataclass(frozen=True)
class JobOutcome:
    """How a :class:`BackgroundJob` ended.

    Attributes
    ----------
    status
        ``'done'``, ``'failed'`` or ``'cancelled'``.
    result
        What the work returned (``'done'`` only).
    message
        One line for the user (``'failed'`` and ``'cancelled'``).
    done, total
        Items finished and items asked for, as last reported by the engine.
    seconds
        Wall time of the run.
    """

    status: str
    result: Any = None
    message: str = ""
    done: int = 0
    total: int = 0
    seconds: float = 0.0


class BackgroundJob:
    """Run ``work(progress, cancel)`` in a thread and keep what the UI needs to follow it.

    Parameters
    ----------
    work
        The engine call, taking the engine's ``progress(done, total, items_per_s)`` callback and
        a :class:`threading.Event` as ``cancel``; it must not touch Streamlit.
    doing
        What the work does, for messages ("annotating the cells").
    unit
        Plural noun of the items the engine counts ("cells").
    """

    def __init__(self, work: Callable[[ProgressFn, threading.Event], Any], *, doing: str,
                 unit: str = "cells") -> None:
        self.doing = doing
        self.unit = unit
        self.cancel_event = threading.Event()
        self._work = work
        self._lock = threading.Lock()
        self._done = self._total = 0
        self._rate = 0.0
        self._outcome: JobOutcome | None = None
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"c2s-job: {doing}", daemon=True)

    def start(self) -> BackgroundJob:
        """Start the thread; returns the job itself."""
        self._start = time.monotonic()
        self._thread.start()
        return self

    def _progress(self, done: int, total: int, rate: float) -> None:
        with self._lock:
            self._done, self._total, self._rate = done, total, rate

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self.cancel_event)
            outcome = JobOutcome("done", result=result)
        except CancelledError as err:
            outcome = JobOutcome("cancelled", message=(
                f"Stopped {self.doing} after {err.done} of {err.total} {self.unit}, as asked. "
                "Nothing was changed: earlier results are kept."), done=err.done, total=err.total)
        except Exception as err:  # the thread is the last place to catch it
            outcome = JobOutcome("failed", message=error_message(err, self.doing))
        done, total, _ = self.progress()
        with self._lock:
            self._outcome = JobOutcome(outcome.status, outcome.result, outcome.message,
                                       outcome.done or done, outcome.total or total,
                                       time.monotonic() - self._start)

    @property
    def running(self) -> bool:
        """True until the work has returned or raised."""
        with self._lock:
            return self._outcome is None

    @property
    def outcome(self) -> JobOutcome | None:
        """How the job ended (None while it runs)."""
        with self._lock:
            return self._outcome

    def cancel(self) -> None:
        """Ask the engine to stop before its next batch."""
        self.cancel_event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ended (or ``timeout`` seconds passed); True when it ended."""
        self._thread.join(timeout)
        return not self.running

    def progress(self) -> tuple[int, int, float]:
        """``(done, total, items_per_s)`` as last reported by the engine."""
        with self._lock:
            return self._done, self._total, self._rate

    def status_text(self) -> str:
        """"120 of 700 cells · 35.2 cells/s · about 17 s left" (what the progress bar says)."""
        done, total, rate = self.progress()
        if total == 0:
            return f"Starting: {self.doing}..."
        text = f"{done:,} of {total:,} {self.unit} · {rate:.1f} {self.unit}/s"
        if rate > 0 and done < total:
            text += f" · about {format_duration((total - done) / rate)} left"
        if self.cancel_event.is_set():
            text += " · stopping after the current batch"
        return text


def format_duration(seconds: float) -> str:
    """``75 -> '1 min 15 s'``: a duration as people say it."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def start_job(session: MutableMapping[str, Any], key: str, job: BackgroundJob) -> None:
    """Start ``job`` and keep it in the session under ``key`` (one job per key)."""
    session[key] = job.start()


def collect_job(session: MutableMapping[str, Any], key: str) -> JobOutcome | None:
    """The outcome of the session's job under ``key`` once it ended (then forgotten), else None."""
    job: BackgroundJob | None = session.get(key)
    if job is None or job.running:
        return None
    del session[key]
    return job.outcome


def job_running(session: MutableMapping[str, Any], key: str) -> bool:
    """Whether the session has an unfinished job under ``key``."""
    job: BackgroundJob | None = session.get(key)
    return job is not None and job.running


def progress_panel(key: str) -> None:
    """Progress bar (items/s, ETA) and Cancel button of the session's job under ``key``.

    The panel redraws itself every :data:`POLL_SECONDS` and reruns the whole page once the job
    has ended, so the page can collect it.
    """

    @st.fragment(run_every=POLL_SECONDS)
    def panel() -> None:
        job: BackgroundJob | None = st.session_state.get(key)
        if job is None:
            return
        if not job.running:
            st.rerun()
        done, total, _ = job.progress()
        st.progress(done / total if total else 0.0, text=job.status_text())
        if st.button("Cancel", key=f"{key}_cancel", icon=":material/cancel:",
                     disabled=job.cancel_event.is_set(),
                     help="Stops after the batch being computed; earlier results are kept."):
            job.cancel()
            st.caption("Stopping after the current batch...")

    panel()


def adata_bytes(adata: ad.AnnData) -> bytes:
    """``adata`` as the bytes of an ``.h5ad`` file (for a download button)."""
    with tempfile.TemporaryDirectory(prefix="c2s-download-") as folder:
        path = Path(folder) / "data.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def download_h5ad(adata: ad.AnnData, file_name: str, *, key: str, label: str) -> None:
    """A download button for ``adata`` as ``.h5ad``; the file is only written when clicked."""
    st.download_button(label, data=lambda: adata_bytes(adata), file_name=file_name,
                       mime="application/x-hdf5", key=key, icon=":material/download:")


def download_csv(table: pd.DataFrame, file_name: str, *, key: str, label: str) -> None:
    """A download button for ``table`` as CSV (index included)."""
    st.download_button(label, data=table.to_csv().encode("utf-8"), file_name=file_name,
                       mime="text/csv", key=key, icon=":material/download:")


def task_not_supported(task: str, task_title: str, loaded: LoadedModel) -> None:
    """Say that ``loaded`` was not trained for ``task`` and offer the models that were.

    Each offered model has a button that switches the session to it (loading it, which for a
    released model may mean a download).
    """
    listed = ", ".join(loaded.card.tasks) or "none"
    st.warning(f"The current model, {loaded.name}, was not trained for {task_title.lower()} "
               f"(its model card lists: {listed}), so its answers here would not mean anything.",
               icon=":material/block:")
    others = [name for name in models_supporting(task) if name != loaded.name]
    if not others:
        st.info("No registered model lists this task. Fine-tune one with `c2s train sft` and "
                "load its folder in the sidebar.")
        return
    st.write("Models trained for it (switching loads the model; a released model is "
             "downloaded the first time):")
    for name in others:
        if st.button(f"Use {name}", key=f"c2s_use_model_{task}_{name}"):
            choice = models.ModelChoice(name, models.current_choice(st.session_state).precision)
            if models.choose(st.session_state, choice) is not None:
                st.rerun()
            st.error(models.model_error(st.session_state) or f"Could not load {name}.")
