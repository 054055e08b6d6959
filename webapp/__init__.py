"""C2S Studio web app (Streamlit). The analysis itself lives in ``c2s_engine``; this package only
holds the app's entry script, its launcher and session-state helpers."""
