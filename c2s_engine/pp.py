"""Preprocessing namespace (scanpy-style ``c2s.pp``): make a user's AnnData ready for C2S.

- :func:`prepare`: the one call after :func:`c2s_engine.read` (symbols, organism, checks, normalisation).
- :func:`validate`: the validation report without changing anything.
- :func:`use_gene_symbols`, :func:`detect_identifiers`: gene identifiers and organism.
- :func:`normalize`, :func:`detect_normalization`: the C2S expression convention.
"""

from c2s_engine.genes import detect_identifiers, use_gene_symbols
from c2s_engine.normalization import detect_normalization, normalize
from c2s_engine.validation import prepare, validate

__all__ = [
    "detect_identifiers",
    "detect_normalization",
    "normalize",
    "prepare",
    "use_gene_symbols",
    "validate",
]
