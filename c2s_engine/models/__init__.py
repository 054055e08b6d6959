"""Model side of the engine: the registry of released checkpoints, safe loading, memory sizing."""

from __future__ import annotations

from c2s_engine.models.card import TASKS, ModelCard
from c2s_engine.models.loading import LoadedModel, load_model
from c2s_engine.models.memory import MemoryEstimate, estimate_memory, resolve_target
from c2s_engine.models.registry import get_card, list_models

__all__ = [
    "TASKS",
    "LoadedModel",
    "MemoryEstimate",
    "ModelCard",
    "estimate_memory",
    "get_card",
    "list_models",
    "load_model",
    "resolve_target",
]
