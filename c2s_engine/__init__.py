"""C2S Studio engine: AnnData -> cell sentences -> prompts -> model -> answers -> AnnData.

Scanpy-style layout::

    import c2s_engine as c2s
    adata = c2s.read("data.h5ad")
    c2s.pp.prepare(adata)
    c2s.tl.sentences(adata, top_k=200)
    c2s.get_sentences(adata)
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# peft imports bitsandbytes, whose CPU backend logs a warning on CPUs with AVX512-BF16 that it
# could not fetch a 4-bit kernel from the Hugging Face Hub. C2S Studio never downloads code and
# never runs 4-bit on the CPU (bitsandbytes quantisation is for CUDA), so the line is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Submodules load on first use so `import c2s_engine` (and `c2s --help`) stays fast:
# scanpy, anndata and torch take seconds to import.
_LAZY = {
    "pp": ("c2s_engine.pp", None),
    "tl": ("c2s_engine.tl", None),
    "errors": ("c2s_engine.errors", None),
    "read": ("c2s_engine.readers", "read"),
    "get_sentences": ("c2s_engine.sentences", "get_sentences"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'c2s_engine' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
