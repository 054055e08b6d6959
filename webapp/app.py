"""Entry script of the C2S Studio web app: logo, page navigation and the sidebar dataset card.

Run it with ``c2s app`` (see ``webapp/launch.py``), which starts Streamlit with safe settings.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from webapp.state import DATASET_KEY, dataset_card

ROOT = Path(__file__).resolve().parent.parent

# Pages in menu order. Later pages are added by listing them here.
PAGES = [
    st.Page(
        ROOT / "pages" / "1_Upload_data.py", title="Upload data", icon=":material/upload_file:"
    ),
]

st.set_page_config(page_title="C2S Studio", page_icon=":material/biotech:", layout="wide")
st.logo(str(ROOT / "assets" / "logo.svg"), size="large")

page = st.navigation(PAGES)
page.run()

# Drawn after the page so that a dataset loaded during this run is already shown.
with st.sidebar.container(border=True):
    dataset = st.session_state.get(DATASET_KEY)
    if dataset is None:
        st.caption("No dataset loaded yet. Start on the Upload data page.")
    else:
        card = dataset_card(dataset)
        st.caption("Current dataset")
        st.text(card.pop("Dataset"))  # text, not markdown: file names may contain * or _
        st.markdown("  \n".join(f"{label}: {value}" for label, value in card.items()))
