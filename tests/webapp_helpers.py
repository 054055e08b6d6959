"""Shared fixtures and helpers for the web app's page tests (Streamlit AppTest, no browser).

Use with ``pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]``. The ``webapp_env`` fixture
points the ``demo`` model at a tiny random checkpoint whose card lists every task and keeps
workspaces in a temporary folder; the ``webapp`` fixture (which sets that up too) gives
:class:`WebApp`, whose ``open`` starts the app on a page, optionally with a dataset already in
the session.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from c2s_engine.models import TASKS
from c2s_engine.models.loading import DEMO_ENV_VAR
from webapp.state import DATASET_KEY, LoadedDataset, load_example
from webapp.workspace import WORKSPACE_ENV_VAR

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "webapp" / "app.py"
# Reading the example and loading the model take a few seconds on a busy 2-core machine.
TIMEOUT = 120
TINY_CARD = {"base": "vandijklab/C2S-Scale-Gemma-2-2B", "context_length": 256, "top_k": 16}


@pytest.fixture(scope="session")
def all_tasks_model_dir(build_checkpoint, tmp_path_factory) -> Path:
    """A tiny Gemma-2 checkpoint whose c2s.json card lists every task the engine knows."""
    return build_checkpoint(tmp_path_factory.mktemp("webapp-models") / "all-tasks", "gemma2",
                            card={**TINY_CARD, "tasks": list(TASKS)})


@pytest.fixture(scope="session")
def qa_only_model_dir(build_checkpoint, tmp_path_factory) -> Path:
    """A tiny checkpoint whose card lists question answering only (no cell type prediction)."""
    return build_checkpoint(tmp_path_factory.mktemp("webapp-models") / "qa-only", "gemma2",
                            card={**TINY_CARD, "tasks": ["question_answering"]})


@pytest.fixture
def webapp_env(monkeypatch, tmp_path, all_tasks_model_dir) -> Path:
    """``demo`` = the all-tasks tiny model; workspaces under a fresh folder (returned)."""
    root = tmp_path / "workspaces"
    monkeypatch.setenv(DEMO_ENV_VAR, str(all_tasks_model_dir))
    monkeypatch.setenv(WORKSPACE_ENV_VAR, str(root))
    return root


@pytest.fixture(scope="session")
def _example() -> LoadedDataset:
    return load_example()


@pytest.fixture
def example_dataset(_example) -> LoadedDataset:
    """The prepared example dataset (a private copy of its AnnData)."""
    return replace(_example, adata=_example.adata.copy())


@pytest.fixture
def small_example(_example) -> LoadedDataset:
    """The first 32 cells of the prepared example (fast to annotate with a tiny model)."""
    return replace(_example, adata=_example.adata[:32].copy())


@pytest.fixture(scope="session")
def _annotated(_example, all_tasks_model_dir) -> LoadedDataset:
    from c2s_engine.models import load_model
    from c2s_engine.tasks.annotate import annotate

    adata = _example.adata[:32].copy()
    annotate(adata, load_model(str(all_tasks_model_dir)), labels_from="bulk_labels",
             groupby="louvain", top_k=16, cache=False)
    return replace(_example, adata=adata)


@pytest.fixture
def annotated_example(_annotated) -> LoadedDataset:
    """:func:`small_example` already annotated by the all-tasks tiny model (a private copy):
    candidates and truth from ``bulk_labels``, clusters from ``louvain``."""
    return replace(_annotated, adata=_annotated.adata.copy())


class WebApp:
    """AppTest helpers, handed to tests by the :func:`webapp` fixture."""

    @staticmethod
    def open(page: str | None = None, *, dataset: LoadedDataset | None = None,
             query: dict[str, str] | None = None, session: dict | None = None) -> AppTest:
        """Run the app once on ``page`` (e.g. ``"pages/2_Annotate.py"``; the first page when
        None), with ``dataset`` and the other ``session`` entries already in the session state
        and ``query`` as the URL's query parameters."""
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params.update(query or {})
        if dataset is not None:
            at.session_state[DATASET_KEY] = dataset
        for key, value in (session or {}).items():
            at.session_state[key] = value
        if page is not None:
            at.switch_page(str(REPO / page))
        at.run()
        return at

    @staticmethod
    def texts(elements) -> list[str]:
        """The ``value`` of every element of an AppTest element list, as strings."""
        return [str(element.value) for element in elements]

    @staticmethod
    def sidebar(at: AppTest) -> str:
        """Everything written as text, markdown or caption in the sidebar, one per line."""
        return "\n".join(WebApp.texts([*at.sidebar.text, *at.sidebar.markdown,
                                       *at.sidebar.caption]))


@pytest.fixture
def webapp(webapp_env) -> WebApp:
    """AppTest helpers, with the tiny demo model and a private workspace folder in place."""
    return WebApp()
