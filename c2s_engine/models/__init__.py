"""Model side of the engine: the registry of released checkpoints, safe loading, memory sizing."""

from __future__ import annotations

import logging

# bitsandbytes' CPU backend tries to fetch an optional kernel from the Hugging Face Hub and
# logs a warning on every start when it cannot; we never download at run time, so the
# message is noise to users (4-bit runs on CUDA, where that kernel is not used).
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from c2s_engine.models.card import TASKS, ModelCard  # noqa: E402
from c2s_engine.models.loading import (  # noqa: E402
    LoadedModel,
    bundled_models,
    bundled_names,
    load_model,
)
from c2s_engine.models.memory import MemoryEstimate, estimate_memory, resolve_target  # noqa: E402
from c2s_engine.models.registry import get_card, list_models  # noqa: E402

__all__ = [
    "TASKS",
    "LoadedModel",
    "MemoryEstimate",
    "ModelCard",
    "bundled_models",
    "bundled_names",
    "estimate_memory",
    "get_card",
    "list_models",
    "load_model",
    "resolve_target",
]
