"""Training: datasets built from AnnData, and (in sibling modules) the trainers.

The dataset builder lives in :mod:`c2s_engine.training.dataset` (:class:`DatasetConfig`,
:func:`build_dataset`, :func:`save_dataset`, :func:`load_saved_dataset`), its splits in
:mod:`c2s_engine.training.splits` (:class:`SplitConfig`, :class:`SplitInfo`) and derived text
targets in :mod:`c2s_engine.training.targets`. Names are loaded on first use, so importing this
package does not import scanpy or datasets.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DatasetConfig": "c2s_engine.training.dataset",
    "build_dataset": "c2s_engine.training.dataset",
    "save_dataset": "c2s_engine.training.dataset",
    "load_saved_dataset": "c2s_engine.training.dataset",
    "SplitConfig": "c2s_engine.training.splits",
    "SplitInfo": "c2s_engine.training.splits",
    "read_gmt": "c2s_engine.training.targets",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'c2s_engine.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
