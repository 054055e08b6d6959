"""Entry script of the C2S Studio web app: logo, page navigation, workspace and sidebar.

Run it with ``c2s app`` (see ``webapp/launch.py``), which starts Streamlit with safe settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from c2s_engine.errors import C2SError, WorkspaceError
from webapp import state
from webapp.sidebar import render_sidebar

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_OFFERED = "c2s_example_offered"

UPLOAD_PAGE = st.Page(
    state.UPLOAD_SCRIPT, title="Upload data", icon=":material/upload_file:"
)
# Pages in menu order. Later pages are added by listing them here.
PAGES = [
    UPLOAD_PAGE,
    st.Page(ROOT / "pages" / "2_Annotate.py", title="Annotate", icon=":material/label:"),
    st.Page(ROOT / "pages" / "3_Caption_clusters.py", title="Caption clusters",
            icon=":material/short_text:"),
    st.Page(ROOT / "pages" / "4_Dataset_summary.py", title="Dataset summary",
            icon=":material/summarize:"),
    st.Page(ROOT / "pages" / "5_Ask_questions.py", title="Ask questions",
            icon=":material/forum:"),
    st.Page(ROOT / "pages" / "6_Simulate_perturbations.py", title="Simulate perturbations",
            icon=":material/science:"),
    st.Page(ROOT / "pages" / "7_Spatial_neighborhoods.py", title="Spatial neighborhoods",
            icon=":material/scatter_plot:"),
]

st.set_page_config(page_title="C2S Studio", page_icon=":material/biotech:", layout="wide")
st.logo(str(ROOT / "assets" / "logo.svg"), size="large")

# Before the page: a refreshed browser tab gets its saved dataset and results back.
try:
    state.attach_workspace(st.session_state, st.query_params)
except WorkspaceError as err:
    st.error(str(err))

# `bash scripts/run.sh` sets C2S_EXAMPLE_ON_START=1 so a new session opens on the example data;
# offered once per session, so clearing the workspace really empties it.
if os.environ.get("C2S_EXAMPLE_ON_START") == "1" and not st.session_state.get(EXAMPLE_OFFERED):
    st.session_state[EXAMPLE_OFFERED] = True
    if state.DATASET_KEY not in st.session_state:
        try:
            state.set_dataset(st.session_state, state.load_example())
        except C2SError as err:
            st.error(str(err))

page = st.navigation(PAGES)
page.run()

# Drawn after the page so that a dataset or model chosen during this run is already shown.
render_sidebar(UPLOAD_PAGE)
