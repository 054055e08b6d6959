"""`bash scripts/run.sh` opens a new session on the example data; plain app runs start empty."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from webapp.state import DATASET_KEY, EXAMPLE_NAME

pytest_plugins = ["tiny_checkpoints", "webapp_helpers"]
APP = Path(__file__).resolve().parents[1] / "webapp" / "app.py"


def test_run_script_asks_for_the_example_on_start():
    text = (APP.parents[1] / "scripts" / "run.sh").read_text()
    assert 'C2S_EXAMPLE_ON_START="${C2S_EXAMPLE_ON_START:-1}"' in text


def test_new_session_opens_on_the_example_when_asked(webapp_env, monkeypatch):
    monkeypatch.setenv("C2S_EXAMPLE_ON_START", "1")
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    dataset = at.session_state[DATASET_KEY]
    assert dataset.name == EXAMPLE_NAME and dataset.adata.shape == (700, 765)


def test_without_the_setting_a_session_starts_empty(webapp_env, monkeypatch):
    monkeypatch.delenv("C2S_EXAMPLE_ON_START", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception
    assert DATASET_KEY not in at.session_state
