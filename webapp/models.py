"""Which model a session uses, and the one loaded copy of it every session shares.

A model is loaded once per server process (``st.cache_resource``, keyed by name, precision and
device) and shared by all browser sessions; which model a session uses is its own choice, kept
in its session state. Loading only starts when a page needs the model or the user asks for
one, and a failed load is remembered for that choice, so a missing download is not retried on
every click.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import streamlit as st

from c2s_engine.errors import C2SError
from c2s_engine.models import LoadedModel, bundled_names, list_models, load_model
from c2s_engine.models.loading import DEMO_ENV_VAR, DEMO_NAME

logger = logging.getLogger(__name__)

CHOICE_KEY = "c2s_model_choice"
ERROR_KEY = "c2s_model_error"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelChoice:
    """What the session asked for: ``demo``, a Hugging Face id or a local folder."""

    name: str = DEMO_NAME
    precision: str = "auto"
    device: str = "auto"


def model_options() -> list[str]:
    """Names offered in the model picker: the demo model, the other models shipped with
    C2S Studio (offline), then the released checkpoints."""
    shipped = [name for name in bundled_names() if name != DEMO_NAME]
    return [DEMO_NAME, *shipped, *(card.name for card in list_models())]


@st.cache_resource(max_entries=2, show_spinner="Loading the model (once for all sessions)...")
def _load_shared(name: str, precision: str, device: str, demo_folder: str) -> LoadedModel:
    # demo_folder is part of the cache key only: "demo" means whatever folder
    # $C2S_DEMO_MODEL names, so another folder must be another cache entry.
    return load_model(name, precision=precision, device=device)


def _load(choice: ModelChoice) -> LoadedModel:
    return _load_shared(choice.name, choice.precision, choice.device,
                        os.environ.get(DEMO_ENV_VAR, "") if choice.name == DEMO_NAME else "")


def current_choice(session: MutableMapping[str, Any]) -> ModelChoice:
    """The session's model choice (the demo model until the user picks another)."""
    return session.get(CHOICE_KEY, ModelChoice())


def choose(session: MutableMapping[str, Any], choice: ModelChoice) -> LoadedModel | None:
    """Switch the session to ``choice`` and load it now; None (and the error kept) on failure."""
    session[CHOICE_KEY] = choice
    session.pop(ERROR_KEY, None)
    return current_model(session)


def current_model(session: MutableMapping[str, Any]) -> LoadedModel | None:
    """The session's model, loaded (or taken from the shared cache), or None when it failed.

    The failure's one-line message is in ``session[ERROR_KEY]`` as ``(choice, message)`` and
    is not retried for the same choice until :func:`choose` is called again.
    """
    choice = current_choice(session)
    failed = session.get(ERROR_KEY)
    if failed is not None and failed[0] == choice:
        return None
    try:
        return _load(choice)
    except C2SError as err:
        message = str(err)
    except Exception as err:  # a loader bug must reach the user as one line, not a traceback
        logger.exception("unexpected error while loading model %s", choice.name)
        message = (f"Could not load model {choice.name} ({type(err).__name__}: {err}). Fix: "
                   "choose another model in the sidebar; if this one should work, report this "
                   "error together with the server log.")
    session[ERROR_KEY] = (choice, " ".join(message.split()))
    return None


def model_error(session: MutableMapping[str, Any]) -> str | None:
    """The one-line message of the session's failed model load, if it failed."""
    failed = session.get(ERROR_KEY)
    return failed[1] if failed is not None and failed[0] == current_choice(session) else None


def format_bytes(n_bytes: int) -> str:
    """``1536 -> '1.5 KB'``: sizes in the units people read (powers of 1024)."""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def model_card(loaded: LoadedModel) -> dict[str, str]:
    """The few facts shown in the sidebar for the current model."""
    return {
        "Model": loaded.name,
        "Precision": loaded.precision,
        "Device": loaded.device,
        "Tasks": ", ".join(loaded.card.tasks) or "unknown (no model card)",
        "Memory": format_bytes(loaded.memory_bytes),
    }

