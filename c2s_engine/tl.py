"""Tools namespace (scanpy-style ``c2s.tl``): cell sentences, their reverse, and the model tasks.

Data tools (no model):

- :func:`sentences`: rank genes per cell into ``obsm['c2s_ranks']``.
- :func:`fit_reverse`: fit expression ~ log10(1 + rank) into ``uns['c2s']['reverse']``.
- :func:`reconstruct`: expression AnnData from any list of sentences.
- :func:`spatial_neighbors`: neighbourhood graph from ``obsm['spatial']``.

Model tasks (each takes ``model="demo"`` or a loaded model, writes results under documented
keys and provenance under ``uns['c2s'][<task>]``):

- :func:`annotate`, :func:`embed`, :func:`generate_cells`
- :func:`caption_clusters`, :func:`summarize_dataset`, :func:`answer_question`
- :func:`predict_perturbation`
- :func:`predict_niche`, :func:`predict_same_neighborhood`, :func:`generate_neighbors`

Model tasks import torch and transformers, so they load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from c2s_engine.reverse import fit_reverse, reconstruct
from c2s_engine.sentences import compute_sentences as sentences

_TASKS = {
    "annotate": "c2s_engine.tasks.annotate",
    "embed": "c2s_engine.tasks.embed",
    "generate_cells": "c2s_engine.tasks.generate",
    "caption_clusters": "c2s_engine.tasks.caption",
    "set_caption": "c2s_engine.tasks.caption",
    "summarize_dataset": "c2s_engine.tasks.summarize",
    "answer_question": "c2s_engine.tasks.ask",
    "predict_perturbation": "c2s_engine.tasks.perturb",
    "spatial_neighbors": "c2s_engine.tasks.spatial",
    "predict_niche": "c2s_engine.tasks.spatial",
    "predict_same_neighborhood": "c2s_engine.tasks.spatial",
    "generate_neighbors": "c2s_engine.tasks.spatial",
}

__all__ = ["fit_reverse", "reconstruct", "sentences", *_TASKS]


def __getattr__(name: str) -> Any:
    if name not in _TASKS:
        raise AttributeError(f"module 'c2s_engine.tl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_TASKS[name]), name)
    globals()[name] = value
    return value
